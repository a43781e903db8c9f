// Command envoy-check validates the Envoy configuration files of examples/envoy strictly against Envoy's API,
// without running Envoy: no Envoy binary can be installed on the machines this project is built on.
//
//	envoy-check DIR|FILE...
//
// It finds, in the YAML and JSON files given (directories are walked):
//   - Envoy bootstrap configs: a plain file with no apiVersion/kind, checked as envoy.config.bootstrap.v3.Bootstrap;
//   - xDS resource files, as filesystem SDS reads them (a plain file with a top-level "resources" list),
//     checked as envoy.service.discovery.v3.DiscoveryResponse, each resource unpacked from its Any;
//   - the same inside Kubernetes ConfigMaps: the data entries of a ConfigMap manifest, and the files a
//     kustomization's configMapGenerator puts into one.
//
// Each config goes through these steps; any error makes the exit status 1:
//  1. YAML is decoded strictly (duplicate keys fail), and every key is looked up in the proto schema with its
//     line number: an unknown field, an "@type" that names no known message, or an enum value that does not
//     exist is reported with its YAML line, its field path and the nearest valid name.
//  2. YAML is converted to JSON and unmarshalled with protojson, unknown fields rejected (DiscardUnknown false).
//  3. The protoc-gen-validate rules go-control-plane ships run (ValidateAll) on the message and on every Any
//     inside it, unpacked (PGV does not look into an Any: typed_config contents are validated here instead).
//  4. Every typed_config must be of the kind of extension its place takes (a listener's transport socket must be
//     a DownstreamTlsContext, not an UpstreamTlsContext, an HTTP filter must not be a network filter, ...), for
//     the extension types this checker knows.
//  5. Filesystem SDS as Envoy does it: an SDS file holds exactly one Secret, and, when bootstrap and SDS files
//     share a ConfigMap, each SdsSecretConfig's path_config_source names a key of that ConfigMap (at its mount
//     path in the Pods that mount it) whose Secret has the requested name and kind. A Pod's
//     "envoy --config-path" must name a bootstrap key of a ConfigMap it mounts there.
//
// Fields and enum values that Envoy's API marks deprecated are reported as warnings (exit status unchanged).
// Extension types resolve only if their go-control-plane package is blank-imported below: add the import when
// an example starts using a new extension.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/known/anypb"
	"gopkg.in/yaml.v3"

	// Extensions whose typed_config the examples use or are likely to use. Blank imports register their types
	// with protoregistry, so that "@type" URLs resolve.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/file/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/raw_buffer/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

const (
	apiModule      = "github.com/envoyproxy/go-control-plane/envoy"
	anyName        = protoreflect.FullName("google.protobuf.Any")
	secretName     = protoreflect.FullName("envoy.extensions.transport_sockets.tls.v3.Secret")
	sdsConfigName  = protoreflect.FullName("envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig")
	kindBootstrap  = "bootstrap"
	kindXDS        = "xDS resource file"
	maxEnumListing = 12
)

// ---- field paths ---------------------------------------------------------------------------------------------

// seg is one step of a field path: a field (name, with its JSON name), a list index or a map key.
type seg struct {
	field, json string
	index       int
	key         string
	kind        byte // 'f', 'i', 'k'
}

type fpath []seg

func (p fpath) with(s seg) fpath {
	q := make(fpath, len(p), len(p)+1)
	copy(q, p)
	return append(q, s)
}

func (p fpath) field(name, json string) fpath { return p.with(seg{field: name, json: json, kind: 'f'}) }
func (p fpath) idx(i int) fpath               { return p.with(seg{index: i, kind: 'i'}) }
func (p fpath) key(k string) fpath            { return p.with(seg{key: k, kind: 'k'}) }

func (p fpath) String() string {
	var b strings.Builder
	for _, s := range p {
		switch s.kind {
		case 'f':
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			b.WriteString(s.field)
		case 'i':
			fmt.Fprintf(&b, "[%d]", s.index)
		case 'k':
			fmt.Fprintf(&b, "[%s]", s.key)
		}
	}
	if b.Len() == 0 {
		return "(top level)"
	}
	return b.String()
}

// lastField is the name of the innermost field of p.
func (p fpath) lastField() string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i].kind == 'f' {
			return p[i].field
		}
	}
	return ""
}

// ---- YAML helpers --------------------------------------------------------------------------------------------

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || (n.Kind == yaml.ScalarNode && n.Tag == "!!null")
}

func mapGet(n *yaml.Node, key string) *yaml.Node {
	n = deref(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return deref(n.Content[i+1])
		}
	}
	return nil
}

func scalarAt(n *yaml.Node, keys ...string) string {
	for _, k := range keys {
		n = mapGet(n, k)
	}
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}

func seqAt(n *yaml.Node, keys ...string) []*yaml.Node {
	for _, k := range keys {
		n = mapGet(n, k)
	}
	if n == nil || n.Kind != yaml.SequenceNode {
		return nil
	}
	out := make([]*yaml.Node, len(n.Content))
	for i, c := range n.Content {
		out[i] = deref(c)
	}
	return out
}

func stringsAt(n *yaml.Node, keys ...string) []string {
	var out []string
	for _, c := range seqAt(n, keys...) {
		if c.Kind == yaml.ScalarNode {
			out = append(out, c.Value)
		}
	}
	return out
}

// decodeDocs returns the root node of each non-empty document of a YAML stream.
func decodeDocs(data []byte) ([]*yaml.Node, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var docs []*yaml.Node
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return nil, err
		}
		if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || isNull(doc.Content[0]) {
			continue
		}
		docs = append(docs, doc.Content[0])
	}
}

// lineOf finds the YAML line of the field at p, as far as p can be followed (0 if not even its first step).
func lineOf(root *yaml.Node, p fpath) int {
	n, line := deref(root), 0
	for _, s := range p {
		if n == nil {
			break
		}
		switch s.kind {
		case 'f', 'k':
			want := s.key
			if s.kind == 'f' {
				want = s.field
			}
			var next *yaml.Node
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					k := n.Content[i].Value
					if k == want || (s.kind == 'f' && s.json != "" && k == s.json) {
						line, next = n.Content[i].Line, deref(n.Content[i+1])
						break
					}
				}
			}
			n = next
		case 'i':
			if n.Kind != yaml.SequenceNode || s.index >= len(n.Content) {
				return line
			}
			n = deref(n.Content[s.index])
			line = n.Line
		}
	}
	return line
}

// ---- model ---------------------------------------------------------------------------------------------------

type issue struct {
	line int
	path fpath
	msg  string
}

// envoyFile is one Envoy config: a plain file, or one data entry of a ConfigMap manifest.
type envoyFile struct {
	label      string // what to call it: its path, or "path (ConfigMap ns/name data[key])"
	file       string // the file its YAML is in
	lineOffset int    // added to YAML line numbers to get the file's (ConfigMap block scalars), -1: unknown
	kind       string
	root       *yaml.Node

	msg      proto.Message
	errs     []issue
	warns    []issue
	anyTypes []string
	secrets  []*tlsv3.Secret // xDS file: its Secrets
	sdsRefs  []sdsRef        // bootstrap: its SdsSecretConfigs read from files
	notes    []string
}

type sdsRef struct {
	at       fpath
	name     string
	file     string
	wantKind string // the Secret field the reference needs: tls_certificate, validation_context, ...
}

func (f *envoyFile) loc(line int) string {
	switch {
	case line <= 0:
		return f.label
	case f.lineOffset < 0:
		return fmt.Sprintf("%s, line %d of the entry", f.label, line)
	case f.lineOffset > 0:
		return fmt.Sprintf("%s:%d", f.file, line+f.lineOffset) + strings.TrimPrefix(f.label, f.file)
	default:
		return fmt.Sprintf("%s:%d", f.file, line)
	}
}

type configMap struct {
	name, namespace string
	origin          string                // where it is defined
	keys            map[string]bool       // every key
	entries         map[string]*envoyFile // keys that hold an Envoy config
}

type mount struct{ volume, mountPath, subPath string }

type container struct {
	name   string
	argv   []string
	mounts []mount
}

type pod struct {
	label      string
	namespace  string
	cmVolumes  map[string]string // volume name -> ConfigMap name
	containers []container
}

type kustomization struct {
	file string
	root *yaml.Node
}

type checker struct {
	out            io.Writer
	files          map[string]*envoyFile // plain files by cleaned path
	order          []*envoyFile
	configMaps     []*configMap
	pods           []*pod
	kustomizations []kustomization
	errors         int
	warnings       int
}

func (c *checker) fail(where, msg string) {
	c.errors++
	fmt.Fprintf(c.out, "FAIL  %s: %s\n", where, msg)
}

// ---- loading -------------------------------------------------------------------------------------------------

func isConfigName(p string) bool {
	switch strings.ToLower(path.Ext(p)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

func (c *checker) loadArg(arg string) {
	st, err := os.Stat(arg)
	if err != nil {
		c.fail(arg, err.Error())
		return
	}
	if !st.IsDir() {
		c.loadFile(arg)
		return
	}
	var files []string
	err = filepath.WalkDir(arg, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != arg && strings.HasPrefix(d.Name(), ".") {
			return filepath.SkipDir
		}
		if !d.IsDir() && isConfigName(p) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		c.fail(arg, err.Error())
	}
	sort.Strings(files)
	for _, p := range files {
		c.loadFile(p)
	}
}

func (c *checker) loadFile(p string) {
	p = filepath.Clean(p)
	if _, done := c.files[p]; done {
		return
	}
	data, err := os.ReadFile(p)
	if err != nil {
		c.fail(p, err.Error())
		return
	}
	docs, err := decodeDocs(data)
	if err != nil {
		c.fail(p, "not valid YAML: "+err.Error())
		return
	}
	var plain []*yaml.Node
	for _, doc := range docs {
		if doc.Kind == yaml.MappingNode && scalarAt(doc, "apiVersion") != "" && scalarAt(doc, "kind") != "" {
			c.loadObject(p, doc)
		} else {
			plain = append(plain, doc)
		}
	}
	switch {
	case len(plain) == 0:
	case len(docs) > 1:
		c.fail(fmt.Sprintf("%s:%d", p, plain[0].Line), "a document without apiVersion/kind in a multi-document file: "+
			"an Envoy config must be a file of its own")
	default:
		f := &envoyFile{label: p, file: p, root: plain[0], kind: classify(plain[0])}
		c.files[p] = f
		c.order = append(c.order, f)
	}
}

// classify tells an xDS resource file (filesystem subscription: a DiscoveryResponse) from a bootstrap.
func classify(root *yaml.Node) string {
	if mapGet(root, "resources") != nil {
		return kindXDS
	}
	return kindBootstrap
}

func (c *checker) loadObject(file string, doc *yaml.Node) {
	kind := scalarAt(doc, "kind")
	name := scalarAt(doc, "metadata", "name")
	ns := scalarAt(doc, "metadata", "namespace")
	switch kind {
	case "Kustomization":
		c.kustomizations = append(c.kustomizations, kustomization{file: file, root: doc})
	case "ConfigMap":
		cm := &configMap{name: name, namespace: ns, origin: file, keys: map[string]bool{}, entries: map[string]*envoyFile{}}
		c.configMaps = append(c.configMaps, cm)
		for _, field := range []string{"data", "binaryData"} {
			d := mapGet(doc, field)
			if d == nil || d.Kind != yaml.MappingNode {
				continue
			}
			for i := 0; i+1 < len(d.Content); i += 2 {
				key, val := d.Content[i].Value, deref(d.Content[i+1])
				cm.keys[key] = true
				if field != "data" || !isConfigName(key) || val.Kind != yaml.ScalarNode {
					continue
				}
				label := fmt.Sprintf("%s (ConfigMap %s data[%s])", file, qualified(ns, name), key)
				docs, err := decodeDocs([]byte(val.Value))
				if err != nil {
					c.fail(label, "not valid YAML: "+err.Error())
					continue
				}
				if len(docs) != 1 || scalarAt(docs[0], "kind") != "" {
					continue // not an Envoy config
				}
				offset := -1
				if val.Style == yaml.LiteralStyle {
					offset = val.Line
				}
				f := &envoyFile{label: label, file: file, lineOffset: offset, root: docs[0], kind: classify(docs[0])}
				cm.entries[key] = f
				c.order = append(c.order, f)
			}
		}
	default:
		spec := mapGet(doc, "spec")
		switch kind {
		case "Pod":
		case "CronJob":
			spec = mapGet(mapGet(mapGet(mapGet(mapGet(doc, "spec"), "jobTemplate"), "spec"), "template"), "spec")
		default:
			spec = mapGet(mapGet(spec, "template"), "spec")
		}
		if spec != nil {
			c.pods = append(c.pods, podOf(fmt.Sprintf("%s (%s %s)", file, kind, qualified(ns, name)), ns, spec))
		}
	}
}

func qualified(ns, name string) string {
	if ns == "" {
		return name
	}
	return ns + "/" + name
}

func podOf(label, ns string, spec *yaml.Node) *pod {
	p := &pod{label: label, namespace: ns, cmVolumes: map[string]string{}}
	for _, v := range seqAt(spec, "volumes") {
		if cm := scalarAt(v, "configMap", "name"); cm != "" {
			p.cmVolumes[scalarAt(v, "name")] = cm
		}
	}
	for _, list := range []string{"initContainers", "containers"} {
		for _, ct := range seqAt(spec, list) {
			k := container{name: scalarAt(ct, "name")}
			k.argv = append(stringsAt(ct, "command"), stringsAt(ct, "args")...)
			for _, m := range seqAt(ct, "volumeMounts") {
				k.mounts = append(k.mounts, mount{
					volume:    scalarAt(m, "name"),
					mountPath: path.Clean(scalarAt(m, "mountPath")),
					subPath:   scalarAt(m, "subPath"),
				})
			}
			p.containers = append(p.containers, k)
		}
	}
	return p
}

// loadKustomizations turns each configMapGenerator into a ConfigMap whose entries are the files it names.
func (c *checker) loadKustomizations() {
	for _, k := range c.kustomizations {
		dir := filepath.Dir(k.file)
		defaultNS := scalarAt(k.root, "namespace")
		for _, g := range seqAt(k.root, "configMapGenerator") {
			ns := scalarAt(g, "namespace")
			if ns == "" {
				ns = defaultNS
			}
			cm := &configMap{
				name: scalarAt(g, "name"), namespace: ns, keys: map[string]bool{}, entries: map[string]*envoyFile{},
				origin: fmt.Sprintf("%s (configMapGenerator %s)", k.file, scalarAt(g, "name")),
			}
			c.configMaps = append(c.configMaps, cm)
			for _, lit := range stringsAt(g, "literals") {
				key, _, _ := strings.Cut(lit, "=")
				cm.keys[key] = true
			}
			for _, spec := range stringsAt(g, "files") {
				key, src, found := strings.Cut(spec, "=")
				if !found {
					key, src = path.Base(spec), spec
				}
				p := filepath.Clean(filepath.Join(dir, filepath.FromSlash(src)))
				cm.keys[key] = true
				if _, err := os.Stat(p); err != nil {
					c.fail(cm.origin, fmt.Sprintf("files entry %q: %v", spec, err))
					continue
				}
				if !isConfigName(p) {
					continue
				}
				c.loadFile(p)
				if f := c.files[p]; f != nil {
					cm.entries[key] = f
				}
			}
		}
	}
}

// ---- step 1: the YAML against the proto schema, with line numbers --------------------------------------------

type schemaCheck struct{ f *envoyFile }

func (s *schemaCheck) err(line int, p fpath, msg string) {
	s.f.errs = append(s.f.errs, issue{line: line, path: p, msg: msg})
}

func isWellKnown(md protoreflect.MessageDescriptor) bool {
	return md.ParentFile().Package() == "google.protobuf"
}

func (s *schemaCheck) message(n *yaml.Node, md protoreflect.MessageDescriptor, p fpath) {
	n = deref(n)
	if isNull(n) || n.Kind != yaml.MappingNode {
		return // a type mismatch: protojson reports it
	}
	if md.FullName() == anyName {
		t := mapGet(n, "@type")
		if t == nil || t.Kind != yaml.ScalarNode {
			s.err(n.Line, p, `an Any without "@type"`)
			return
		}
		mt, err := protoregistry.GlobalTypes.FindMessageByURL(t.Value)
		if err != nil {
			s.err(t.Line, p.field("@type", "@type"), unknownType(t.Value))
			return
		}
		if isWellKnown(mt.Descriptor()) {
			return
		}
		s.fields(n, mt.Descriptor(), p, true)
		return
	}
	if isWellKnown(md) {
		return
	}
	s.fields(n, md, p, false)
}

func (s *schemaCheck) fields(n *yaml.Node, md protoreflect.MessageDescriptor, p fpath, inAny bool) {
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if inAny && k.Value == "@type" {
			continue
		}
		if k.Tag == "!!merge" {
			for _, src := range append([]*yaml.Node{v}, deref(v).Content...) {
				if src = deref(src); src != nil && src.Kind == yaml.MappingNode {
					s.fields(src, md, p, inAny)
				}
			}
			continue
		}
		fd := md.Fields().ByJSONName(k.Value)
		if fd == nil {
			fd = md.Fields().ByName(protoreflect.Name(k.Value))
		}
		if fd == nil {
			s.err(k.Line, p.field(k.Value, ""), fmt.Sprintf("unknown field %q in %s%s", k.Value, md.FullName(),
				suggest(k.Value, fieldNames(md))))
			continue
		}
		s.value(v, fd, p.field(string(fd.Name()), fd.JSONName()))
	}
}

func (s *schemaCheck) value(v *yaml.Node, fd protoreflect.FieldDescriptor, p fpath) {
	v = deref(v)
	if isNull(v) {
		return
	}
	switch {
	case fd.IsMap():
		if v.Kind != yaml.MappingNode {
			return
		}
		for i := 0; i+1 < len(v.Content); i += 2 {
			s.single(v.Content[i+1], fd.MapValue(), p.key(v.Content[i].Value))
		}
	case fd.IsList():
		if v.Kind != yaml.SequenceNode {
			return
		}
		for i, e := range v.Content {
			s.single(e, fd, p.idx(i))
		}
	default:
		s.single(v, fd, p)
	}
}

func (s *schemaCheck) single(v *yaml.Node, fd protoreflect.FieldDescriptor, p fpath) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		s.message(v, fd.Message(), p)
	case protoreflect.EnumKind:
		v = deref(v)
		ed := fd.Enum()
		if isNull(v) || v.Kind != yaml.ScalarNode || ed.FullName() == "google.protobuf.NullValue" {
			return
		}
		if ed.Values().ByName(protoreflect.Name(v.Value)) != nil {
			return
		}
		if _, err := strconv.ParseInt(v.Value, 10, 32); err == nil {
			return // a number: protojson takes it, PGV's defined_only rules judge it
		}
		var names []string
		for i := 0; i < ed.Values().Len(); i++ {
			names = append(names, string(ed.Values().Get(i).Name()))
		}
		listing := names
		if len(listing) > maxEnumListing {
			listing = append(listing[:maxEnumListing:maxEnumListing], "...")
		}
		s.err(v.Line, p, fmt.Sprintf("%q is not a value of enum %s (%s)%s", v.Value, ed.FullName(),
			strings.Join(listing, ", "), suggest(v.Value, names)))
	}
}

func fieldNames(md protoreflect.MessageDescriptor) []string {
	var out []string
	for i := 0; i < md.Fields().Len(); i++ {
		out = append(out, string(md.Fields().Get(i).Name()))
	}
	return out
}

func unknownType(url string) string {
	var names []string
	protoregistry.GlobalTypes.RangeMessages(func(mt protoreflect.MessageType) bool {
		names = append(names, "type.googleapis.com/"+string(mt.Descriptor().FullName()))
		return true
	})
	sort.Strings(names)
	return fmt.Sprintf("cannot resolve \"@type\" %q: it names no message of Envoy's API %s, nor of the "+
		"extensions this checker imports (a typo? a new extension: add a blank import of its go-control-plane "+
		"package to e2e/envoy-check/main.go)%s", url, apiVersion(), suggest(url, names))
}

// suggest returns ` (did you mean "x"?)` for the candidate nearest to s, if it is near enough.
func suggest(s string, candidates []string) string {
	best, bestD := "", -1
	for _, c := range candidates {
		if d := levenshtein(strings.ToLower(s), strings.ToLower(c)); bestD < 0 || d < bestD {
			best, bestD = c, d
		}
	}
	if bestD < 0 || bestD > 2+len(s)/8 {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// ---- steps 3 and 4: PGV rules, Anys, extension kinds, deprecations -------------------------------------------

// Extension kinds of the typed configs this checker knows, and the places that take each kind.
var extensionKinds = map[protoreflect.FullName][]string{
	"envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext":                    {"downstream transport socket"},
	"envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext":                      {"upstream transport socket"},
	"envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer":                        {"downstream transport socket", "upstream transport socket"},
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager": {"network filter"},
	"envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy":                            {"network filter"},
	"envoy.extensions.filters.http.router.v3.Router":                                    {"HTTP filter"},
	"envoy.extensions.access_loggers.file.v3.FileAccessLog":                             {"access logger"},
	"envoy.extensions.access_loggers.stream.v3.StdoutAccessLog":                         {"access logger"},
	"envoy.extensions.access_loggers.stream.v3.StderrAccessLog":                         {"access logger"},
	"envoy.extensions.upstreams.http.v3.HttpProtocolOptions":                            {"cluster protocol options"},
}

// placeKind tells which kind of extension an Any at this place takes ("" if this checker does not know).
func placeKind(stack []protoreflect.FullName, field string) string {
	if len(stack) == 0 {
		return ""
	}
	switch stack[len(stack)-1] {
	case "envoy.config.core.v3.TransportSocket":
		for i := len(stack) - 1; i >= 0; i-- {
			switch stack[i] {
			case "envoy.config.cluster.v3.Cluster":
				return "upstream transport socket"
			case "envoy.config.listener.v3.Listener":
				return "downstream transport socket"
			}
		}
	case "envoy.config.listener.v3.Filter":
		return "network filter"
	case "envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter":
		return "HTTP filter"
	case "envoy.config.accesslog.v3.AccessLog":
		return "access logger"
	case "envoy.config.cluster.v3.Cluster":
		if field == "typed_extension_protocol_options" {
			return "cluster protocol options"
		}
	}
	return ""
}

type walker struct{ f *envoyFile }

func (w *walker) err(p fpath, msg string) {
	w.f.errs = append(w.f.errs, issue{line: lineOf(w.f.root, p), path: p, msg: msg})
}

func (w *walker) warn(p fpath, msg string) {
	w.f.warns = append(w.f.warns, issue{line: lineOf(w.f.root, p), path: p, msg: msg})
}

// validate runs the PGV rules of m (which stop at Anys: walk unpacks and validates those).
func (w *walker) validate(m proto.Message, p fpath) {
	v, ok := m.(interface{ ValidateAll() error })
	if !ok {
		return
	}
	if err := v.ValidateAll(); err != nil {
		w.pgv(err, m.ProtoReflect().Descriptor(), p)
	}
}

type pgvError interface {
	error
	Field() string
	Reason() string
	Cause() error
	ErrorName() string
}

// pgv reports each leaf of a PGV error tree at its proto field path.
func (w *walker) pgv(err error, md protoreflect.MessageDescriptor, p fpath) {
	if multi, ok := err.(interface{ AllErrors() []error }); ok {
		for _, e := range multi.AllErrors() {
			w.pgv(e, md, p)
		}
		return
	}
	var pe pgvError
	if !errors.As(err, &pe) || md == nil {
		w.err(p, err.Error())
		return
	}
	q, next, name := pgvStep(pe.Field(), md, p)
	if pe.Cause() != nil && pe.Reason() == "embedded message failed validation" && next != nil {
		w.pgv(pe.Cause(), next, q)
		return
	}
	msg := pe.Reason()
	if pe.Cause() != nil {
		msg += ": " + pe.Cause().Error()
	}
	w.err(q, fmt.Sprintf("%s (validation rule of %s.%s)", msg, md.FullName(), name))
}

// pgvStep maps a PGV field ("TlsParams", "Clusters[0]", "Map[key]") of md to proto names.
func pgvStep(field string, md protoreflect.MessageDescriptor, p fpath) (fpath, protoreflect.MessageDescriptor, string) {
	name, suffix := field, ""
	if i := strings.IndexByte(field, '['); i >= 0 && strings.HasSuffix(field, "]") {
		name, suffix = field[:i], field[i+1:len(field)-1]
	}
	norm := func(s string) string { return strings.ToLower(strings.ReplaceAll(s, "_", "")) }
	for i := 0; i < md.Fields().Len(); i++ {
		fd := md.Fields().Get(i)
		if norm(string(fd.Name())) != norm(name) {
			continue
		}
		q := p.field(string(fd.Name()), fd.JSONName())
		var next protoreflect.MessageDescriptor
		switch {
		case fd.IsMap():
			if suffix != "" {
				q = q.key(suffix)
			}
			next = fd.MapValue().Message()
		default:
			if suffix != "" {
				if n, err := strconv.Atoi(suffix); err == nil {
					q = q.idx(n)
				}
			}
			next = fd.Message()
		}
		return q, next, string(fd.Name())
	}
	for i := 0; i < md.Oneofs().Len(); i++ {
		od := md.Oneofs().Get(i)
		if norm(string(od.Name())) == norm(name) {
			return p.field(string(od.Name()), ""), nil, string(od.Name()) + " (oneof)"
		}
	}
	return p.field(field, ""), nil, field
}

func (w *walker) walk(m protoreflect.Message, p fpath, stack []protoreflect.FullName) {
	md := m.Descriptor()
	if md.FullName() == anyName {
		a, ok := m.Interface().(*anypb.Any)
		if !ok {
			return
		}
		inner, err := a.UnmarshalNew()
		if err != nil {
			w.err(p, fmt.Sprintf("cannot unpack %s: %v", a.GetTypeUrl(), err))
			return
		}
		name := inner.ProtoReflect().Descriptor().FullName()
		w.f.anyTypes = append(w.f.anyTypes, string(name.Name()))
		if want := placeKind(stack, p.lastField()); want != "" {
			if kinds, known := extensionKinds[name]; known && !contains(kinds, want) {
				w.err(p.field("@type", "@type"), fmt.Sprintf("%s is %s, but this place takes %s (%s): "+
					"Envoy would find no such extension here", name, article(strings.Join(kinds, " or ")),
					article(want), typesOfKind(want)))
			}
		}
		w.validate(inner, p)
		w.walk(inner.ProtoReflect(), p, stack)
		return
	}
	stack = append(stack[:len(stack):len(stack)], md.FullName())
	if md.FullName() == sdsConfigName {
		w.sdsRef(m, p)
	}
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		q := p.field(string(fd.Name()), fd.JSONName())
		if opts, ok := fd.Options().(*descriptorpb.FieldOptions); ok && opts.GetDeprecated() {
			w.warn(q, fmt.Sprintf("field %s.%s is deprecated in Envoy's API", md.FullName(), fd.Name()))
		}
		switch {
		case fd.IsList():
			l := v.List()
			for j := 0; j < l.Len(); j++ {
				w.elem(fd, l.Get(j), q.idx(j), stack)
			}
		case fd.IsMap():
			var keys []protoreflect.MapKey
			v.Map().Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
				keys = append(keys, k)
				return true
			})
			sort.Slice(keys, func(a, b int) bool { return keys[a].String() < keys[b].String() })
			for _, k := range keys {
				w.elem(fd.MapValue(), v.Map().Get(k), q.key(k.String()), stack)
			}
		default:
			w.elem(fd, v, q, stack)
		}
	}
}

func (w *walker) elem(fd protoreflect.FieldDescriptor, v protoreflect.Value, p fpath, stack []protoreflect.FullName) {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		w.walk(v.Message(), p, stack)
	case protoreflect.EnumKind:
		ev := fd.Enum().Values().ByNumber(v.Enum())
		if ev == nil {
			return
		}
		if opts, ok := ev.Options().(*descriptorpb.EnumValueOptions); ok && opts.GetDeprecated() {
			w.warn(p, fmt.Sprintf("enum value %s is deprecated in Envoy's API", ev.FullName()))
		}
	}
}

func (w *walker) sdsRef(m protoreflect.Message, p fpath) {
	s, ok := m.Interface().(*tlsv3.SdsSecretConfig)
	if !ok {
		return
	}
	src := s.GetSdsConfig()
	file := src.GetPathConfigSource().GetPath()
	if file == "" {
		file = src.GetPath()
	}
	if file == "" {
		return
	}
	want := ""
	switch p.lastField() {
	case "tls_certificate_sds_secret_configs":
		want = "tls_certificate"
	case "validation_context_sds_secret_config":
		want = "validation_context"
	case "session_ticket_keys_sds_secret_config":
		want = "session_ticket_keys"
	}
	w.f.sdsRefs = append(w.f.sdsRefs, sdsRef{at: p, name: s.GetName(), file: file, wantKind: want})
}

func article(s string) string {
	if strings.ContainsAny(s[:1], "aeiouAEIOU") {
		return "an " + s
	}
	return "a " + s
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func typesOfKind(kind string) string {
	var out []string
	for name, kinds := range extensionKinds {
		if contains(kinds, kind) {
			out = append(out, string(name.Name()))
		}
	}
	sort.Strings(out)
	return "e.g. " + strings.Join(out, ", ")
}

func secretKind(s *tlsv3.Secret) string {
	switch s.GetType().(type) {
	case *tlsv3.Secret_TlsCertificate:
		return "tls_certificate"
	case *tlsv3.Secret_ValidationContext:
		return "validation_context"
	case *tlsv3.Secret_SessionTicketKeys:
		return "session_ticket_keys"
	case *tlsv3.Secret_GenericSecret:
		return "generic_secret"
	}
	return "nothing"
}

// ---- per file ------------------------------------------------------------------------------------------------

func (c *checker) check(f *envoyFile) {
	var msg proto.Message = &bootstrapv3.Bootstrap{}
	if f.kind == kindXDS {
		msg = &discoveryv3.DiscoveryResponse{}
	}
	md := msg.ProtoReflect().Descriptor()
	(&schemaCheck{f: f}).message(f.root, md, nil)
	if len(f.errs) == 0 {
		if err := unmarshal(f.root, msg); err != nil {
			f.errs = append(f.errs, issue{msg: err.Error()})
		}
	}
	if len(f.errs) == 0 {
		f.msg = msg
		w := &walker{f: f}
		w.validate(msg, nil)
		w.walk(msg.ProtoReflect(), nil, nil)
		if f.kind == kindXDS {
			c.checkResources(f, msg.(*discoveryv3.DiscoveryResponse))
		}
	}
	c.report(f, md)
}

// unmarshal converts the YAML to JSON and unmarshals it with protojson, unknown fields rejected.
func unmarshal(root *yaml.Node, msg proto.Message) error {
	var v any
	if err := root.Decode(&v); err != nil {
		// "yaml: unmarshal errors:\n  line 43: mapping key "type" already defined at line 42" on one line
		msg := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n")
		return fmt.Errorf("YAML: %s", strings.Join(strings.Fields(strings.ReplaceAll(msg, "\n", ";")), " "))
	}
	js, err := json.Marshal(jsonable(v))
	if err != nil {
		return fmt.Errorf("YAML to JSON: %w", err)
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(js, msg); err != nil {
		return fmt.Errorf("protojson (on the JSON form of the YAML): %w", err)
	}
	return nil
}

func jsonable(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = jsonable(e)
		}
		return t
	case map[any]any:
		m := make(map[string]any, len(t))
		for k, e := range t {
			m[fmt.Sprint(k)] = jsonable(e)
		}
		return m
	case []any:
		for i, e := range t {
			t[i] = jsonable(e)
		}
	}
	return v
}

func (c *checker) checkResources(f *envoyFile, r *discoveryv3.DiscoveryResponse) {
	typeURL := r.GetTypeUrl()
	for i, a := range r.GetResources() {
		p := fpath(nil).field("resources", "resources").idx(i)
		if typeURL == "" {
			typeURL = a.GetTypeUrl()
		} else if a.GetTypeUrl() != typeURL {
			f.errs = append(f.errs, issue{line: lineOf(f.root, p), path: p, msg: fmt.Sprintf(
				"resource of type %s in a file of %s: a filesystem subscription takes one type", a.GetTypeUrl(), typeURL)})
		}
		if a.MessageName() != secretName {
			continue
		}
		var s tlsv3.Secret
		if err := a.UnmarshalTo(&s); err != nil {
			continue // reported by the walk
		}
		f.secrets = append(f.secrets, &s)
		if s.GetName() == "" {
			f.errs = append(f.errs, issue{line: lineOf(f.root, p), path: p.field("name", "name"),
				msg: "a Secret without name: SDS finds secrets by name"})
		}
	}
	if len(r.GetResources()) == 0 {
		f.errs = append(f.errs, issue{path: fpath(nil).field("resources", "resources"), line: lineOf(f.root,
			fpath(nil).field("resources", "resources")), msg: "no resources"})
	}
	if len(f.secrets) > 1 {
		f.errs = append(f.errs, issue{path: fpath(nil).field("resources", "resources"), line: lineOf(f.root,
			fpath(nil).field("resources", "resources")), msg: fmt.Sprintf("%d Secrets in one SDS file: Envoy "+
			"takes exactly one (\"Unexpected SDS secrets length\"); use one file per secret", len(f.secrets))})
	}
}

func (c *checker) report(f *envoyFile, md protoreflect.MessageDescriptor) {
	desc := string(md.Name())
	if f.kind == kindXDS && f.msg != nil {
		var parts []string
		for _, s := range f.secrets {
			parts = append(parts, fmt.Sprintf("Secret %q (%s)", s.GetName(), secretKind(s)))
		}
		if len(parts) > 0 {
			desc += " with " + strings.Join(parts, ", ")
		}
	}
	if f.msg != nil && len(f.anyTypes) > 0 {
		desc += "; typed configs: " + strings.Join(f.anyTypes, ", ")
	}
	for _, w := range f.warns {
		c.warnings++
		fmt.Fprintf(c.out, "WARN  %s: %s: %s\n", f.loc(w.line), w.path, w.msg)
	}
	if len(f.errs) == 0 {
		fmt.Fprintf(c.out, "OK    %s: %s\n", f.label, desc)
		return
	}
	c.errors += len(f.errs)
	fmt.Fprintf(c.out, "FAIL  %s: %s: %d error(s)\n", f.label, desc, len(f.errs))
	for _, e := range f.errs {
		where := f.loc(e.line)
		if len(e.path) > 0 {
			where += ": " + e.path.String()
		}
		fmt.Fprintf(c.out, "        %s: %s\n", where, e.msg)
	}
}

// ---- step 5: bootstraps against the SDS files and Pods of their ConfigMap -------------------------------------

func (c *checker) crossCheck() int {
	checked := 0
	for _, cm := range c.configMaps {
		var bootstraps []string
		for key, f := range cm.entries {
			if f.kind == kindBootstrap {
				bootstraps = append(bootstraps, key)
			}
		}
		if len(bootstraps) == 0 {
			continue
		}
		checked++
		sort.Strings(bootstraps)
		fmt.Fprintf(c.out, "ConfigMap %s, from %s:\n", qualified(cm.namespace, cm.name), cm.origin)
		where := "  ConfigMap " + cm.name
		dirs := map[string]bool{}
		for _, pd := range c.pods {
			if !sameNamespace(pd.namespace, cm.namespace) {
				continue
			}
			for _, ct := range pd.containers {
				for _, m := range ct.mounts {
					if pd.cmVolumes[m.volume] == cm.name && m.subPath == "" {
						dirs[m.mountPath] = true
						c.checkArgv(cm, pd, ct, m.mountPath)
					}
				}
			}
		}
		for _, key := range bootstraps {
			f := cm.entries[key]
			if f.msg == nil {
				continue
			}
			for _, ref := range f.sdsRefs {
				c.checkRef(cm, where, key, f, ref, dirs)
			}
		}
	}
	return checked
}

func sameNamespace(a, b string) bool {
	if a == "" {
		a = "default"
	}
	if b == "" {
		b = "default"
	}
	return a == b
}

func (c *checker) checkRef(cm *configMap, where, key string, f *envoyFile, ref sdsRef, dirs map[string]bool) {
	fail := func(msg string) {
		c.fail(fmt.Sprintf("%s: %s → %s", where, f.loc(lineOf(f.root, ref.at)), ref.file), msg+" (at "+ref.at.String()+")")
	}
	dir, base := path.Split(path.Clean(ref.file))
	dir = path.Clean(dir)
	what := fmt.Sprintf("%s: %s → %s", where, key, ref.file)
	if len(dirs) > 0 && !dirs[dir] {
		fmt.Fprintf(c.out, "NOTE  %s: not in this ConfigMap (mounted at %s), not checked\n", what, keysOf(dirs))
		return
	}
	if !cm.keys[base] {
		fail(fmt.Sprintf("the ConfigMap has no key %q: Envoy would find no file there (keys: %s)", base,
			keysOf(cm.keys)))
		return
	}
	sds := cm.entries[base]
	switch {
	case sds == nil || sds.kind != kindXDS:
		fail(fmt.Sprintf("key %q is not an SDS resource file", base))
	case sds.msg == nil:
		fail(fmt.Sprintf("key %q is not valid (see above)", base))
	case len(sds.secrets) != 1:
		fail(fmt.Sprintf("key %q holds %d Secrets, Envoy takes exactly one", base, len(sds.secrets)))
	case sds.secrets[0].GetName() != ref.name:
		fail(fmt.Sprintf("the SdsSecretConfig asks for secret %q but %s holds %q: Envoy would reject the "+
			"update (\"Unexpected SDS secret (expecting %s)\")", ref.name, base, sds.secrets[0].GetName(), ref.name))
	case ref.wantKind != "" && secretKind(sds.secrets[0]) != ref.wantKind:
		fail(fmt.Sprintf("secret %q holds %s, but %s needs %s", ref.name, secretKind(sds.secrets[0]),
			ref.at.lastField(), ref.wantKind))
	default:
		note := ""
		if len(dirs) == 0 {
			note = " (no Pod here mounts the ConfigMap: matched by file name)"
		}
		fmt.Fprintf(c.out, "OK    %s: Secret %q (%s) as %s asks%s\n", what, ref.name, secretKind(sds.secrets[0]),
			ref.at.lastField(), note)
	}
}

// checkArgv checks the --config-path (-c) of an Envoy container that mounts cm at dir.
func (c *checker) checkArgv(cm *configMap, pd *pod, ct container, dir string) {
	isEnvoy := len(ct.argv) > 0 && path.Base(ct.argv[0]) == "envoy"
	for i, a := range ct.argv {
		var cfg string
		switch {
		case a == "--config-path" || (isEnvoy && a == "-c"):
			if i+1 < len(ct.argv) {
				cfg = ct.argv[i+1]
			}
		case strings.HasPrefix(a, "--config-path="):
			cfg = strings.TrimPrefix(a, "--config-path=")
		}
		if cfg == "" || path.Dir(path.Clean(cfg)) != dir {
			continue
		}
		base := path.Base(cfg)
		what := fmt.Sprintf("  %s container %s: --config-path %s", pd.label, ct.name, cfg)
		if f := cm.entries[base]; f != nil && f.kind == kindBootstrap {
			fmt.Fprintf(c.out, "OK    %s → ConfigMap %s[%s], a bootstrap\n", what, cm.name, base)
		} else {
			c.fail(what, fmt.Sprintf("ConfigMap %s mounted at %s has no bootstrap %q (keys: %s)", cm.name, dir, base,
				keysOf(cm.keys)))
		}
	}
}

func keysOf(m map[string]bool) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// ---- main ----------------------------------------------------------------------------------------------------

func apiVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == apiModule {
				if d.Replace != nil {
					return d.Version + " => " + d.Replace.Path + " " + d.Replace.Version
				}
				return d.Version
			}
		}
	}
	return "(unknown version)"
}

func main() {
	flag.Usage = func() {
		fmt.Fprintf(os.Stderr, "usage: %s DIR|FILE...\n\nValidates Envoy bootstrap and SDS files (plain, or in "+
			"ConfigMaps and kustomize configMapGenerators) against Envoy's API (%s %s) and its PGV rules.\n",
			filepath.Base(os.Args[0]), apiModule, apiVersion())
	}
	version := flag.Bool("version", false, "print the go-control-plane version and exit")
	flag.Parse()
	if *version {
		fmt.Println(apiModule, apiVersion())
		return
	}
	if flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}
	c := &checker{out: os.Stdout, files: map[string]*envoyFile{}}
	fmt.Fprintf(c.out, "envoy-check: Envoy API from %s %s, protojson (unknown fields rejected) + PGV ValidateAll\n",
		apiModule, apiVersion())
	for _, arg := range flag.Args() {
		c.loadArg(arg)
	}
	c.loadKustomizations()
	bootstraps := 0
	for _, f := range c.order {
		c.check(f)
		if f.kind == kindBootstrap {
			bootstraps++
		}
	}
	cms := c.crossCheck()
	if bootstraps == 0 {
		c.fail(strings.Join(flag.Args(), " "), "no Envoy bootstrap found: nothing was validated")
	}
	fmt.Fprintf(c.out, "envoy-check: %d Envoy config(s) (%d bootstrap(s)), %d ConfigMap(s) cross-checked: "+
		"%d error(s), %d warning(s)\n", len(c.order), bootstraps, cms, c.errors, c.warnings)
	if c.errors > 0 {
		os.Exit(1)
	}
}
