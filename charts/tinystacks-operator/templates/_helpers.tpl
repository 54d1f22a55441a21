{{/* The chart's name, as overridden. */}}
{{- define "tinystacks-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The name of every object: the release name, unless it already contains the chart's. */}}
{{- define "tinystacks-operator.fullname" -}}
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

{{/*
The metrics Service's name. A Service name is a DNS label (63 characters at most), so the full
name is cut to leave room for "-metrics": Helm's release names have at most 53 characters, so the
cut never reaches the release name and two releases never share a Service.
*/}}
{{- define "tinystacks-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "tinystacks-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "tinystacks-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tinystacks-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Stable across upgrades: Deployment selectors are immutable. */}}
{{- define "tinystacks-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tinystacks-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tinystacks-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tinystacks-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tinystacks-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The Secret rights of the operator where it writes Secrets (the Database's connection Secret, the
Bastion's SSH key Secret). One list for both places they are granted: the ClusterRole without
operator.watchNamespace, the Role in that namespace with it.
get: read before writing (is it ours?); create, patch: written with server-side apply, which
needs create for a new Secret; list, watch: the Database and Bastion controllers watch the Secrets
they labelled, to repair one that is edited or deleted (RBAC cannot narrow list/watch to a
label); delete: a connection Secret renamed or disabled, the password's Secret as soon as its
Database goes, a Bastion's key Secret once its key is no longer used or the Bastion goes.
*/}}
{{- define "tinystacks-operator.writtenSecretsRule" -}}
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, delete]
{{- end }}

{{/*
The floor of Kubernetes versions, checked only when Helm talks to a cluster (install, upgrade,
template --validate or --dry-run=server: `lookup` answers only then). `helm template` without a
cluster renders for Helm's built-in default version (v1.20 in builds without the version flags),
which says nothing about where the output will be applied. 1.31: the CRDs' CEL rules use the IP
and CIDR libraries, which an API server accepts in new rules from 1.31 (introduced in 1.30's CEL
environment; an API server compiles new rules for its previous minor version).
*/}}
{{- define "tinystacks-operator.checkKubeVersion" -}}
{{- if and (lookup "v1" "Namespace" "" "kube-system") (semverCompare "<1.31.0-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "tinystacks-operator needs Kubernetes 1.31 or later (this cluster runs %s): the CRDs' validation rules use the CEL IP and CIDR libraries" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}

{{/* The scrape settings a ServiceMonitor endpoint and a PodMonitor endpoint share. */}}
{{- define "tinystacks-operator.scrapeSettings" -}}
interval: {{ .interval }}
scrapeTimeout: {{ .scrapeTimeout }}
honorLabels: {{ .honorLabels }}
{{- with .relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
