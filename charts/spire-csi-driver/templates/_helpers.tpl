{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "spire-csi-driver.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every object name: "<release>-<chart>", or the release name when it already contains the chart name. */}}
{{- define "spire-csi-driver.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "spire-csi-driver.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the driver pods: the DaemonSet selector and the ClusterSPIFFEID podSelector. */}}
{{- define "spire-csi-driver.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spire-csi-driver.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "spire-csi-driver.labels" -}}
helm.sh/chart: {{ include "spire-csi-driver.chart" . }}
{{ include "spire-csi-driver.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: csi-node-driver
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "spire-csi-driver.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spire-csi-driver.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The driver image: repository:tag, or repository@digest when a digest is given. There is no default repository
until the project publishes images: a privileged DaemonSet must not pull from a path nobody controls.
*/}}
{{- define "spire-csi-driver.image" -}}
{{- if not .Values.image.repository }}
{{- fail (printf "image.repository is not set: the spire-csi-driver project publishes no image yet. Build it from the repository's Dockerfile (docker build -t registry.example.com/spire-csi-driver:%s .), push it to a registry your nodes can pull from (docker push registry.example.com/spire-csi-driver:%s), then install with --set image.repository=registry.example.com/spire-csi-driver (the tag defaults to the chart's appVersion, %s)" .Chart.AppVersion .Chart.AppVersion .Chart.AppVersion) }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Host paths derived from kubeletRootDir and driver.name (node-driver-registrar's README,
https://github.com/kubernetes-csi/node-driver-registrar/blob/v2.17.0/README.md): kubelet looks for
<root>/plugins_registry/<driver>-reg.sock, and the registrar tells it the driver socket is at
<root>/plugins/<driver>/csi.sock, which is /csi/csi.sock inside the pod.
*/}}
{{- define "spire-csi-driver.kubeletRootDir" -}}
{{- .Values.kubeletRootDir | trimSuffix "/" }}
{{- end }}

{{- define "spire-csi-driver.pluginDir" -}}
{{- printf "%s/plugins/%s" (include "spire-csi-driver.kubeletRootDir" .) .Values.driver.name }}
{{- end }}

{{- define "spire-csi-driver.registrationDir" -}}
{{- printf "%s/plugins_registry" (include "spire-csi-driver.kubeletRootDir" .) }}
{{- end }}

{{- define "spire-csi-driver.podsDir" -}}
{{- printf "%s/pods" (include "spire-csi-driver.kubeletRootDir" .) }}
{{- end }}

{{/* The agent re-creates its socket on restart, so the directory is mounted, never the file. */}}
{{- define "spire-csi-driver.adminSocketDir" -}}
{{- dir .Values.driver.adminSocket }}
{{- end }}

{{/*
driver.publishTimeout in milliseconds, parsed as the driver's --publish-timeout parses it: a bare number of seconds
("90", "1.5", or a YAML number), or number+unit terms with units ms, s, m, h ("60s", "1m30s", "500ms"). Prints
"invalid" for anything else (values.schema.json already refuses those).
*/}}
{{- define "spire-csi-driver.publishTimeoutMs" -}}
{{- $value := .Values.driver.publishTimeout }}
{{- if or (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value) }}
{{- mulf (float64 $value) 1000.0 }}
{{- else }}
{{- $text := trim (toString $value) }}
{{- if regexMatch `^[0-9]+(\.[0-9]+)?$` $text }}
{{- mulf (float64 $text) 1000.0 }}
{{- else if regexMatch `^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$` $text }}
{{- $units := dict "ms" 1.0 "s" 1000.0 "m" 60000.0 "h" 3600000.0 }}
{{- $total := 0.0 }}
{{- range regexFindAll `[0-9]+(\.[0-9]+)?(ms|s|m|h)` $text -1 }}
{{- $number := regexFind `^[0-9]+(\.[0-9]+)?` . }}
{{- $unit := trimPrefix $number . }}
{{- $total = addf $total (mulf (float64 $number) (get $units $unit)) }}
{{- end }}
{{- $total }}
{{- else }}
{{- print "invalid" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Checks that values.schema.json cannot express: the driver container's mount paths must be distinct and must not
nest inside one another (a hostPath mounted inside the pods directory, say, would be shadowed or would shadow it);
publishTimeout must lie below kubelet's 2m NodePublishVolume call timeout (the driver refuses it otherwise, in a
crash loop); the DaemonSet must never run two driver pods on one node (maxSurge 0).
*/}}
{{- define "spire-csi-driver.validate" -}}
{{- $timeoutMs := include "spire-csi-driver.publishTimeoutMs" . }}
{{- /* Rounded to whole milliseconds, as the driver does. */}}
{{- if or (eq $timeoutMs "invalid") (le (round (float64 $timeoutMs) 0) 0.0) (ge (round (float64 $timeoutMs) 0) 120000.0) }}
{{- fail (printf "driver.publishTimeout must be a duration above 0 and below 2m, kubelet's timeout for the whole NodePublishVolume call (e.g. 60s or 1m30s; units ms, s, m, h, or a bare number of seconds), got %v: after 2m kubelet gives up on the call and retries it, so a longer wait never helps" .Values.driver.publishTimeout) }}
{{- end }}
{{- $maxSurge := dig "rollingUpdate" "maxSurge" 0 (.Values.updateStrategy | default dict) | toString }}
{{- if not (has $maxSurge (list "0" "0%")) }}
{{- fail (printf "updateStrategy.rollingUpdate.maxSurge must be 0, got %s: a surge pod would start next to the old driver pod on the same node, and the two would fight over the same CSI socket, state directory and mounts. Use maxUnavailable to roll faster" $maxSurge) }}
{{- end }}
{{- $mounts := dict
  "/csi (driver socket)" "/csi"
  "/tmp (scratch)" "/tmp"
  "kubeletRootDir/pods" (include "spire-csi-driver.podsDir" .)
  "driver.stateDir" .Values.driver.stateDir
  "the directory of driver.adminSocket" (include "spire-csi-driver.adminSocketDir" .) }}
{{- range $a, $pathA := $mounts }}
{{- range $b, $pathB := $mounts }}
{{- if and (ne $a $b) (or (eq $pathA $pathB) (hasPrefix (printf "%s/" $pathA) $pathB)) }}
{{- fail (printf "%s (%s) and %s (%s) overlap: the driver container mounts each at its own path, so they must be distinct and not nested" $a $pathA $b $pathB) }}
{{- end }}
{{- end }}
{{- end }}
{{- $ports := list (int .Values.livenessprobe.port) (int .Values.registrar.httpPort) }}
{{- if .Values.metrics.enabled }}
{{- $ports = append $ports (int .Values.metrics.port) }}
{{- end }}
{{- if ne (len $ports) (len (uniq $ports)) }}
{{- fail (printf "livenessprobe.port, registrar.httpPort and metrics.port must differ (all containers share the pod's network namespace), got %v" $ports) }}
{{- end }}
{{- end }}
