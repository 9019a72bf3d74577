{{/* Chart name, truncated to the 63 characters of a label value. */}}
{{- define "herald.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: `<release>-herald` unless the release name already contains the chart name. */}}
{{- define "herald.fullname" -}}
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

{{/* `<fullname>-<component>`, for a dict with ctx and component. */}}
{{- define "herald.componentName" -}}
{{- printf "%s-%s" (include "herald.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herald.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of a component (dict ctx, component): never change them after release. */}}
{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herald.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Every object's labels (dict ctx, component). */}}
{{- define "herald.labels" -}}
helm.sh/chart: {{ include "herald.chart" .ctx }}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: herald
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "herald.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "herald.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "herald.operatorServiceAccountName" -}}
{{- default (include "herald.componentName" (dict "ctx" . "component" "operator")) .Values.operator.serviceAccount.name }}
{{- end }}

{{/* Whether MongoDB and Redis are configured (NOTES.txt warns otherwise). */}}
{{- define "herald.mongoConfigured" -}}
{{- if or .Values.mongodb.bundled.enabled .Values.mongodb.existingSecret.name .Values.mongodb.uri }}true{{ end }}
{{- end }}
{{- define "herald.redisConfigured" -}}
{{- if or .Values.redis.bundled.enabled .Values.redis.existingSecret.name .Values.redis.url .Values.redis.addr }}true{{ end }}
{{- end }}

{{/*
The environment of the api: the stores, the API and ingest keys, and extraEnv.
*/}}
{{- define "herald.env" -}}
{{ include "herald.storeEnv" . }}
{{- include "herald.keyEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The environment of the delivery, retention and operator pods: the stores and extraEnv, never
the API or ingest key (they serve neither).
*/}}
{{- define "herald.workerEnv" -}}
{{ include "herald.storeEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
The stores' addresses and credentials. Secrets are referenced, never inlined. When MongoDB or
Redis is not configured at all, the variable still points at a key the chart's Secret does not
have: the pod then fails with "couldn't find key MONGO_URI in Secret" rather than starting
standalone on SQLite, which would look healthy and lose data.
*/}}
{{- define "herald.storeEnv" -}}
{{- $fullname := include "herald.fullname" . -}}
- name: MONGO_URI
  valueFrom:
    secretKeyRef:
      {{- if and .Values.mongodb.existingSecret.name (not .Values.mongodb.bundled.enabled) }}
      name: {{ .Values.mongodb.existingSecret.name }}
      key: {{ .Values.mongodb.existingSecret.key }}
      {{- else }}
      name: {{ $fullname }}
      key: MONGO_URI
      {{- end }}
{{- with .Values.mongodb.database }}
- name: HERALD_MONGO_DATABASE
  value: {{ . | quote }}
{{- end }}
{{- if .Values.redis.bundled.enabled }}
- name: REDIS_ADDR
  value: {{ printf "%s-redis:6379" $fullname | quote }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $fullname }}
      key: REDIS_PASSWORD
{{- else if .Values.redis.existingSecret.name }}
{{- if .Values.redis.existingSecret.urlKey }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret.name }}
      key: {{ .Values.redis.existingSecret.urlKey }}
{{- else }}
- name: REDIS_ADDR
  value: {{ required "redis.addr is needed with redis.existingSecret when urlKey is empty" .Values.redis.addr | quote }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.redis.existingSecret.name }}
      key: {{ .Values.redis.existingSecret.passwordKey }}
{{- end }}
{{- else if and .Values.redis.addr (not .Values.redis.url) }}
- name: REDIS_ADDR
  value: {{ .Values.redis.addr | quote }}
{{- if .Values.redis.password }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $fullname }}
      key: REDIS_PASSWORD
{{- end }}
{{- else }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $fullname }}
      key: REDIS_URL
{{- end }}
{{- end }}

{{/* The API and ingest keys: the api pods only. */}}
{{- define "herald.keyEnv" -}}
{{- $fullname := include "herald.fullname" . -}}
{{- if .Values.apiKey.existingSecret.name }}
- name: HERALD_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.apiKey.existingSecret.name }}
      key: {{ .Values.apiKey.existingSecret.key }}
{{- else if or .Values.apiKey.value .Values.apiKey.generate }}
- name: HERALD_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $fullname }}
      key: HERALD_API_KEY
{{- end }}
{{- if .Values.ingestKey.existingSecret.name }}
- name: HERALD_INGEST_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.ingestKey.existingSecret.name }}
      key: {{ .Values.ingestKey.existingSecret.key }}
{{- else if .Values.ingestKey.value }}
- name: HERALD_INGEST_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $fullname }}
      key: HERALD_INGEST_KEY
{{- end }}
{{- end }}

{{/* envFrom of the shared settings ConfigMap. */}}
{{- define "herald.envFrom" -}}
- configMapRef:
    name: {{ include "herald.fullname" . }}
{{- end }}

{{/* Pod-template annotations that roll the pods when settings or the chart's Secret (keys,
connection strings) change: both reach the processes as environment variables. */}}
{{- define "herald.checksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}

{{/* The read-only root filesystem's one writable place. */}}
{{- define "herald.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}
{{- define "herald.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end }}

{{/* The pods allowed to reach the bundled stores: this release's Herald processes. */}}
{{- define "herald.clientPods" -}}
matchLabels:
  app.kubernetes.io/name: {{ include "herald.name" . }}
  app.kubernetes.io/instance: {{ .Release.Name }}
matchExpressions:
  - key: app.kubernetes.io/component
    operator: In
    values: [api, delivery, retention, operator]
{{- end }}
