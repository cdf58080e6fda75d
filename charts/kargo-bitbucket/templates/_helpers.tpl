{{/* The name of the chart, and of every object of a release named like it. */}}
{{- define "kargo-bitbucket.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-<chart>, or just the release name when it already contains the chart's. */}}
{{- define "kargo-bitbucket.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "kargo-bitbucket.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "kargo-bitbucket.serviceAccountName" -}}
{{- default (include "kargo-bitbucket.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{/* Selector labels: never change them on an installed release (selectors are immutable). */}}
{{- define "kargo-bitbucket.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kargo-bitbucket.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kargo-bitbucket.labels" -}}
{{ include "kargo-bitbucket.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* metadata of one object: (list $ name namespace [annotations]); namespace "" for a
cluster-scoped one; the annotations come on top of commonAnnotations. */}}
{{- define "kargo-bitbucket.metadata" -}}
{{- $ctx := index . 0 }}
{{- $namespace := index . 2 }}
{{- $annotations := deepCopy $ctx.Values.commonAnnotations }}
{{- if gt (len .) 3 }}
{{- $annotations = merge (deepCopy (index . 3)) $annotations }}
{{- end -}}
name: {{ index . 1 }}
{{- if $namespace }}
namespace: {{ $namespace }}
{{- end }}
labels:
  {{- include "kargo-bitbucket.labels" $ctx | nindent 2 }}
{{- with $annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The base URL, refused when missing or not one the server accepts. */}}
{{- define "kargo-bitbucket.baseURL" -}}
{{- $url := required "baseURL is required: the public URL Bitbucket reaches the receiver at, e.g. --set baseURL=https://kargo-webhooks.example.com (every receiver URL is <baseURL>/bitbucket/<hash>)" .Values.baseURL }}
{{- if and $url (not (regexMatch "^https?://[^/?#%@\\s]+(/([-A-Za-z0-9._~$&+,:;=@][-A-Za-z0-9._~$&+,:;=@/]*)?)?$" $url)) }}
{{- fail (printf "baseURL %q is not an http(s) URL without credentials, query, fragment, percent-escapes or a path Kargo would escape (letters, digits and -._~$&+,:;=@ only, not beginning with //)" $url) }}
{{- end }}
{{- $host := (urlParse $url).host }}
{{- /* An IPv6 literal's port follows its last colon; any other host's, its first. */}}
{{- $port := trimPrefix ":" (regexFind (ternary ":[^:\\]]*$" ":.*$" (hasPrefix "[" $host)) $host) }}
{{- if and $port (or (not (regexMatch "^[0-9]{1,5}$" $port)) (gt (atoi $port) 65535)) }}
{{- fail (printf "baseURL %q has an invalid port (0-65535)" $url) }}
{{- end }}
{{- $url }}
{{- end }}

{{- define "kargo-bitbucket.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The ServiceAccount as an RBAC subject. */}}
{{- define "kargo-bitbucket.subject" -}}
- kind: ServiceAccount
  name: {{ include "kargo-bitbucket.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}
