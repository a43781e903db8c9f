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

{{/* The driver image: repository:tag, or repository@digest when a digest is given. */}}
{{- define "spire-csi-driver.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Host paths derived from kubeletRootDir and driver.name (reference/csi.md §4): kubelet looks for
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
Checks that values.schema.json cannot express: the driver container's mount paths must be distinct and must not
nest inside one another (a hostPath mounted inside the pods directory, say, would be shadowed or would shadow it).
*/}}
{{- define "spire-csi-driver.validate" -}}
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
