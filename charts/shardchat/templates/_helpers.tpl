{{/* Name helpers. */}}
{{- define "shardchat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shardchat.fullname" -}}
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
Resource names. Chat node pod names are ring node ids, so the StatefulSet
name is kept short enough for "<name>-<ordinal>" to stay a DNS label.
*/}}
{{- define "shardchat.node.name" -}}
{{- printf "%s-chat-node" (include "shardchat.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- define "shardchat.node.headless" -}}
{{- printf "%s-headless" (include "shardchat.node.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "shardchat.operator.name" -}}
{{- printf "%s-operator" (include "shardchat.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "shardchat.redis.name" -}}
{{- printf "%s-redis" (include "shardchat.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "shardchat.node.serviceAccountName" -}}
{{- if .Values.chatNode.serviceAccount.create }}
{{- default (include "shardchat.node.name" .) .Values.chatNode.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.chatNode.serviceAccount.name }}
{{- end }}
{{- end }}
{{- define "shardchat.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "shardchat.operator.name" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Labels every object carries (component objects add their selector labels). */}}
{{- define "shardchat.commonLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/part-of: shardchat
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "shardchat.labels" -}}
{{ include "shardchat.commonLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Selector labels per component. The chat-node name label is what the
operator's --node-selector matches (together with the instance label).
*/}}
{{- define "shardchat.node.selectorLabels" -}}
app.kubernetes.io/name: chat-node
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "shardchat.operator.selectorLabels" -}}
app.kubernetes.io/name: chat-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "shardchat.redis.selectorLabels" -}}
app.kubernetes.io/name: redis
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shardchat.node.labels" -}}
{{ include "shardchat.commonLabels" . }}
{{ include "shardchat.node.selectorLabels" . }}
app.kubernetes.io/component: chat-node
{{- end }}
{{- define "shardchat.operator.labels" -}}
{{ include "shardchat.commonLabels" . }}
{{ include "shardchat.operator.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}
{{- define "shardchat.redis.labels" -}}
{{ include "shardchat.commonLabels" . }}
{{ include "shardchat.redis.selectorLabels" . }}
app.kubernetes.io/component: redis
{{- end }}

{{/* The label selector the operator uses to find chat-node pods. */}}
{{- define "shardchat.operator.nodeSelector" -}}
app.kubernetes.io/name=chat-node,app.kubernetes.io/instance={{ .Release.Name }}
{{- end }}

{{/* image reference: repository[:tag][@digest]; tag defaults to appVersion. */}}
{{- define "shardchat.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end }}

{{/*
Redis URL as EnvVar entries. Bundled Redis: REDIS_PASSWORD from the
password Secret, then the in-cluster URL that references it (Kubernetes
expands $(REDIS_PASSWORD) from the entry defined just before; the pod spec
never holds the password). External: a secretKeyRef to existingSecret, or
to the Secret the chart creates from redis.url.
*/}}
{{- define "shardchat.redis.urlEnv" -}}
{{- $name := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $root.Values.redis.enabled }}
{{- if $root.Values.redis.auth.enabled }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "shardchat.redis.passwordSecret" $root }}
      key: {{ include "shardchat.redis.passwordKey" $root }}
- name: {{ $name }}
  value: {{ printf "redis://:$(REDIS_PASSWORD)@%s:6379" (include "shardchat.redis.name" $root) | quote }}
{{- else }}
- name: {{ $name }}
  value: {{ printf "redis://%s:6379" (include "shardchat.redis.name" $root) | quote }}
{{- end }}
{{- else if $root.Values.redis.existingSecret }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $root.Values.redis.existingSecret }}
      key: {{ $root.Values.redis.existingSecretKey }}
{{- else if $root.Values.redis.url }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ printf "%s-redis-url" (include "shardchat.fullname" $root) }}
      key: redis-url
{{- else }}
{{- fail "Redis is required: set redis.enabled=true (bundled, for trying it out) or redis.existingSecret / redis.url (external)" }}
{{- end }}
{{- end }}

{{/* The bundled Redis password: a Secret the chart generates, or redis.auth.existingSecret. */}}
{{- define "shardchat.redis.passwordSecret" -}}
{{- default (printf "%s-redis-auth" (include "shardchat.fullname" .)) .Values.redis.auth.existingSecret -}}
{{- end }}
{{- define "shardchat.redis.passwordKey" -}}
{{- if .Values.redis.auth.existingSecret -}}
{{- .Values.redis.auth.existingSecretKey -}}
{{- else -}}
redis-password
{{- end -}}
{{- end }}

{{/*
A generated secret value that survives upgrades: the value already stored
in Secret <name> under <key> when there is one (helm install/upgrade can
look it up), else a fresh random one (always with `helm template`).
*/}}
{{- define "shardchat.generatedSecret" -}}
{{- $root := index . 0 -}}
{{- $name := index . 1 -}}
{{- $key := index . 2 -}}
{{- $existing := lookup "v1" "Secret" $root.Release.Namespace $name -}}
{{- if and $existing $existing.data (hasKey $existing.data $key) -}}
{{- index $existing.data $key | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end }}

{{/* terminationGracePeriodSeconds of the chat nodes, checked against the drain. */}}
{{- define "shardchat.node.terminationGrace" -}}
{{- $drain := add .Values.chatNode.preStopSleepSeconds .Values.chatNode.shutdownGraceSeconds -}}
{{- $tgps := int .Values.chatNode.terminationGracePeriodSeconds -}}
{{- if eq $tgps 0 -}}
{{- add $drain 10 -}}
{{- else if le $tgps (int $drain) -}}
{{- fail (printf "chatNode.terminationGracePeriodSeconds (%d) must be greater than preStopSleepSeconds + shutdownGraceSeconds (%d)" $tgps (int $drain)) -}}
{{- else -}}
{{- $tgps -}}
{{- end -}}
{{- end }}

{{/*
How the nodes authenticate clients:
  dev       auth.devMode: no tokens, ?user= trusted (CHAT_DEV_MODE)
  existing  keys from auth.existingSecret
  generated an HS256 secret and an admin token the chart generates into
            <fullname>-auth (the default)
Combinations the nodes would refuse to start with fail the render.
*/}}
{{- define "shardchat.auth.mode" -}}
{{- $a := .Values.auth -}}
{{- $jwtKey := or $a.jwtSecretKey $a.jwtPublicKeyKey $a.jwksKey -}}
{{- if $a.devMode -}}
{{- if $jwtKey -}}
{{- fail "auth.devMode=true cannot be combined with a JWT key (auth.jwtSecretKey, auth.jwtPublicKeyKey, auth.jwksKey): the nodes would refuse to start" -}}
{{- end -}}
{{- if and $a.adminTokenKey (not $a.existingSecret) -}}
{{- fail "auth.adminTokenKey needs auth.existingSecret" -}}
{{- end -}}
dev
{{- else if $a.existingSecret -}}
{{- if not (or $jwtKey $a.adminTokenKey) -}}
{{- fail "auth.existingSecret is set but none of auth.jwtSecretKey, auth.jwtPublicKeyKey, auth.jwksKey, auth.adminTokenKey names a key in it" -}}
{{- end -}}
{{- if not $jwtKey -}}
{{- fail "auth.existingSecret names no JWT key (auth.jwtSecretKey, auth.jwtPublicKeyKey or auth.jwksKey): an admin token alone does not authenticate clients. Name a JWT key, or set auth.devMode=true to run without authentication (for trying it out only)" -}}
{{- end -}}
existing
{{- else -}}
{{- if or $jwtKey $a.adminTokenKey -}}
{{- fail "auth.jwtSecretKey, auth.jwtPublicKeyKey, auth.jwksKey and auth.adminTokenKey name keys of auth.existingSecret, which is not set" -}}
{{- end -}}
generated
{{- end -}}
{{- end }}
{{- define "shardchat.auth.generatedSecret" -}}
{{- printf "%s-auth" (include "shardchat.fullname" .) -}}
{{- end }}
{{- define "shardchat.auth.files" -}}
{{- if and (eq (include "shardchat.auth.mode" .) "existing") (or .Values.auth.jwtPublicKeyKey .Values.auth.jwksKey) -}}
true
{{- end -}}
{{- end }}
