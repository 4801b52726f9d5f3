{{/* Names, labels and shared snippets. Every resource name starts with loraplane.fullname. */}}

{{- define "loraplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-loraplane, or just <release> when the release name already contains the chart name. */}}
{{- define "loraplane.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "loraplane.engineName" -}}{{ include "loraplane.fullname" . }}-engine{{- end }}
{{- define "loraplane.gatewayName" -}}{{ include "loraplane.fullname" . }}-gateway{{- end }}

{{- define "loraplane.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "loraplane.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: loraplane
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component: include with (dict "ctx" $ "component" "engine"). */}}
{{- define "loraplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "loraplane.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "loraplane.componentLabels" -}}
{{ include "loraplane.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "loraplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "loraplane.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image: include with (dict "image" .Values.engine.image "ctx" $) */}}
{{- define "loraplane.image" -}}
{{- printf "%s:%s" .image.repository (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* Mount points. The engine and the gateway see the same registry under different paths;
     the gateway's config says both (registry.adapters_dir and registry.engine_adapters_dir). */}}
{{- define "loraplane.engineModelsDir" -}}/models{{- end }}
{{- define "loraplane.engineAdaptersDir" -}}/adapters{{- end }}
{{- define "loraplane.gatewayModelsDir" -}}/registry/models{{- end }}
{{- define "loraplane.gatewayAdaptersDir" -}}/registry/adapters{{- end }}
{{- define "loraplane.configDir" -}}/etc/loraplane{{- end }}

{{- define "loraplane.modelsClaim" -}}
{{- default (printf "%s-models" (include "loraplane.fullname" .)) .Values.models.existingClaim }}
{{- end }}
{{- define "loraplane.adaptersClaim" -}}
{{- default (printf "%s-adapters" (include "loraplane.fullname" .)) .Values.adapters.existingClaim }}
{{- end }}

{{/* Engine base URLs for the gateway: one per StatefulSet pod through the headless Service, so the
     gateway can load each adapter onto every engine (a load through a load-balanced Service would
     reach one pod only). With autoscaling, the list covers maxReplicas pods. */}}
{{- define "loraplane.engineUrls" -}}
{{- if .Values.gateway.engineUrls }}
{{- toYaml .Values.gateway.engineUrls }}
{{- else }}
{{- $count := int .Values.engine.replicas }}
{{- if .Values.engine.autoscaling.enabled }}{{ $count = int .Values.engine.autoscaling.maxReplicas }}{{ end }}
{{- $name := include "loraplane.engineName" . }}
{{- range $i := until $count }}
- http://{{ $name }}-{{ $i }}.{{ $name }}:{{ $.Values.engine.port }}
{{- end }}
{{- end }}
{{- end }}

{{/* An HTTP GET probe on the "http" port: include with (dict "path" "/health" "probe" <probe values>). */}}
{{- define "loraplane.httpProbe" -}}
httpGet:
  path: {{ .path }}
  port: http
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}

{{/* The adapter-sync containers (s3 mode): include with (dict "ctx" $ "mountPath" "/adapters"). */}}
{{- define "loraplane.adapterSyncEnv" -}}
{{- $s3 := .ctx.Values.adapters.sync.s3 }}
- name: REMOTE
  value: {{ printf "registry:%s" (trimSuffix "/" (printf "%s/%s" $s3.bucket $s3.prefix)) | quote }}
- name: DEST
  value: {{ .mountPath | quote }}
- name: INTERVAL_SECONDS
  value: {{ .ctx.Values.adapters.sync.intervalSeconds | quote }}
- name: HOME
  value: /tmp
- name: RCLONE_CONFIG
  value: /tmp/rclone.conf
- name: RCLONE_CONFIG_REGISTRY_TYPE
  value: s3
- name: RCLONE_CONFIG_REGISTRY_PROVIDER
  value: {{ $s3.provider | quote }}
- name: RCLONE_CONFIG_REGISTRY_ENV_AUTH
  value: "true"
{{- with $s3.region }}
- name: RCLONE_CONFIG_REGISTRY_REGION
  value: {{ . | quote }}
{{- end }}
{{- with $s3.endpoint }}
- name: RCLONE_CONFIG_REGISTRY_ENDPOINT
  value: {{ . | quote }}
{{- end }}
{{- end }}

{{- define "loraplane.adapterSyncContainer" -}}
{{- $sync := .ctx.Values.adapters.sync }}
- name: {{ .name }}
  image: {{ include "loraplane.image" (dict "image" $sync.image "ctx" .ctx) }}
  imagePullPolicy: {{ $sync.image.pullPolicy }}
  command: ["/bin/sh", "/scripts/adapter-sync.sh", {{ .mode | quote }}]
  env:
    {{- include "loraplane.adapterSyncEnv" . | trim | nindent 4 }}
  {{- with $sync.s3.credentialsSecret }}
  envFrom:
    - secretRef:
        name: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .ctx.Values.containerSecurityContext | nindent 4 }}
  resources:
    {{- toYaml $sync.resources | nindent 4 }}
  volumeMounts:
    - name: adapters
      mountPath: {{ .mountPath }}
    - name: adapter-sync-script
      mountPath: /scripts
      readOnly: true
    - name: sync-tmp
      mountPath: /tmp
{{- end }}

{{/* Volumes for the adapter directory of a pod: the shared PVC (read-only) or, in s3 mode, an
     emptyDir filled by the sync containers. */}}
{{- define "loraplane.adapterVolumes" -}}
{{- if eq .Values.adapters.source "s3" }}
- name: adapters
  emptyDir:
    sizeLimit: {{ .Values.adapters.sync.sizeLimit }}
- name: adapter-sync-script
  configMap:
    name: {{ include "loraplane.fullname" . }}-adapter-sync
- name: sync-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- else }}
- name: adapters
  persistentVolumeClaim:
    claimName: {{ include "loraplane.adaptersClaim" . }}
    readOnly: true
{{- end }}
{{- end }}

{{/* The fewest gateway pods: the fixed count, or the HPA's minimum. */}}
{{- define "loraplane.gatewayMinPods" -}}
{{- if .Values.gateway.autoscaling.enabled }}{{ .Values.gateway.autoscaling.minReplicas }}{{ else }}{{ .Values.gateway.replicas }}{{ end }}
{{- end }}

{{/* "true" when more than one gateway pod may run: they then need a shared (PostgreSQL) store. */}}
{{- define "loraplane.gatewayIsReplicated" -}}
{{- if or .Values.gateway.autoscaling.enabled (gt (int .Values.gateway.replicas) 1) }}true{{ end }}
{{- end }}

{{/* The engine key Secret (vLLM --api-key): given, or created by the chart. */}}
{{- define "loraplane.engineKeySecret" -}}
{{- default (printf "%s-key" (include "loraplane.engineName" .)) .Values.engine.apiKey.existingSecret }}
{{- end }}

{{/* Env var LORAPLANE_ENGINE_API_KEY from the engine key Secret: the engines and the gateway only. */}}
{{- define "loraplane.engineKeyEnv" -}}
- name: LORAPLANE_ENGINE_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "loraplane.engineKeySecret" . }}
      key: {{ .Values.engine.apiKey.secretKey }}
{{- end }}

{{/* The SQLite store (no store.urlSecret): a PVC mounted at storeDir. */}}
{{- define "loraplane.storeDir" -}}/var/lib/loraplane{{- end }}
{{- define "loraplane.storeClaim" -}}
{{- default (printf "%s-store" (include "loraplane.fullname" .)) .Values.store.sqlite.existingClaim }}
{{- end }}

{{/* Env of the gateway and its migration init container: the store URL and the shared rate-limit URL. */}}
{{- define "loraplane.gatewayStoreEnv" -}}
{{- $store := .Values.store }}
{{- $rl := .Values.ratelimit }}
- name: LORAPLANE_STORE_URL
{{- if $store.urlSecret.name }}
  valueFrom:
    secretKeyRef:
      name: {{ $store.urlSecret.name }}
      key: {{ $store.urlSecret.key }}
{{- else }}
  value: {{ printf "sqlite:///%s/loraplane.db" (include "loraplane.storeDir" .) | quote }}
{{- end }}
{{- if $rl.redisUrlSecret.name }}
- name: LORAPLANE_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $rl.redisUrlSecret.name }}
      key: {{ $rl.redisUrlSecret.key }}
{{- else if $rl.redisUrl }}
- name: LORAPLANE_REDIS_URL
  value: {{ $rl.redisUrl | quote }}
{{- end }}
{{- end }}

{{- /* "true" when the gateway gets the auth file (a second --config): API keys are on, or an admin key
or an existing Secret is given. The admin key works whatever gateway.auth.enabled is. */ -}}
{{- define "loraplane.authFile" -}}
{{- $a := .Values.gateway.auth -}}
{{- if or $a.enabled $a.adminKeySha256 $a.existingSecret $a.keys }}true{{ end -}}
{{- end }}

{{- /* `config_key: value` lines for the values in .values named in .keys (valuesKey -> config key)
that are not null; "{}" when none is set (null = the gateway's own default, serving/config.py). */ -}}
{{- define "loraplane.optionalKeys" -}}
{{- $out := list -}}
{{- range $valuesKey, $configKey := .keys -}}
{{- $v := index $.values $valuesKey -}}
{{- if not (kindIs "invalid" $v) -}}
{{- $out = append $out (printf "%s: %s" $configKey (toJson $v)) -}}
{{- end -}}
{{- end -}}
{{- if $out }}{{ join "\n" $out }}{{ else }}{}{{ end -}}
{{- end }}

{{/* engine.chatTemplate: where its ConfigMap is mounted in the engine and gateway pods. */}}
{{- define "loraplane.chatTemplateDir" -}}/etc/loraplane/chat-template{{- end }}
{{- define "loraplane.chatTemplatePath" -}}{{ include "loraplane.chatTemplateDir" . }}/chat_template.jinja{{- end }}

{{/* The chat-template volume and its mount (engine and gateway pods), when engine.chatTemplate is set. */}}
{{- define "loraplane.chatTemplateVolume" -}}
{{- if .Values.engine.chatTemplate }}
- name: chat-template
  configMap:
    name: {{ include "loraplane.fullname" . }}-chat-template
{{- end }}
{{- end }}
{{- define "loraplane.chatTemplateMount" -}}
{{- if .Values.engine.chatTemplate }}
- name: chat-template
  mountPath: {{ include "loraplane.chatTemplateDir" . }}
  readOnly: true
{{- end }}
{{- end }}
