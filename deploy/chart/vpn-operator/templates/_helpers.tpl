{{/* Chart name, overridable. */}}
{{- define "vpno.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: the release name, plus the chart name
     unless the release name already contains it. */}}
{{- define "vpno.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "vpno.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "vpno.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "controller"). */}}
{{- define "vpno.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vpno.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of one component's objects. */}}
{{- define "vpno.componentLabels" -}}
{{ include "vpno.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The controller's ServiceAccount. */}}
{{- define "vpno.controllerServiceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "vpno.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The API's namespace: where its proxies and token Secret live. */}}
{{- define "vpno.apiNamespace" -}}
{{- default .Release.Namespace .Values.api.namespace -}}
{{- end -}}

{{/* The API's token Secret. */}}
{{- define "vpno.apiTokenSecret" -}}
{{- default (printf "%s-api-tokens" (include "vpno.fullname" .)) .Values.api.tokens.existingSecret -}}
{{- end -}}

{{/* Pod spec fields shared by every component (scheduling, security, pull secrets). */}}
{{- define "vpno.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.podSecurityContext }}
securityContext:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* Environment shared by every component. */}}
{{- define "vpno.env" -}}
- name: RUST_LOG
  value: {{ .Values.logLevel | quote }}
- name: VPNO_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}

{{/* Pod annotations: the user's, plus scrape annotations when metrics are
     exposed: (dict "ctx" $ "port" 8080). */}}
{{- define "vpno.podAnnotations" -}}
{{- $a := deepCopy (.ctx.Values.podAnnotations | default dict) -}}
{{- if eq (include "vpno.expose" .ctx) "true" -}}
{{- $_ := set $a "prometheus.io/scrape" "true" -}}
{{- $_ := set $a "prometheus.io/port" (toString .port) -}}
{{- $_ := set $a "prometheus.io/path" "/metrics" -}}
{{- end -}}
{{- with .extra }}{{- range $k, $v := . }}{{- $_ := set $a $k $v -}}{{- end }}{{- end -}}
{{- if $a }}{{ toYaml $a }}{{ end -}}
{{- end -}}

{{/* "true" when metrics are advertised (prometheus.expose; early versions
     of the original chart said `prometheus: true|false` for both). */}}
{{- define "vpno.expose" -}}
{{- $p := .Values.prometheus -}}
{{- if kindIs "bool" $p -}}{{- if $p -}}true{{- end -}}
{{- else if ($p | default dict).expose -}}true{{- end -}}
{{- end -}}

{{/* "true" when PodMonitors are wanted (prometheus.podMonitors, or `prometheus: true`). */}}
{{- define "vpno.podMonitors" -}}
{{- $p := .Values.prometheus -}}
{{- if kindIs "bool" $p -}}{{- if $p -}}true{{- end -}}
{{- else if ($p | default dict).podMonitors -}}true{{- end -}}
{{- end -}}

{{/*
Resources of the one controller container.

The original chart ran four controller Deployments, each with
controllers.<kind>.resources. When any of those is given, the controller
container gets their sum: requests add up per resource; a limit is set for a
resource when any controller limits it, and is the sum over the controllers
of their limit, or of their request where they set no limit (so the limit
never falls below the summed request). Otherwise the top-level `resources`
(early versions of the original chart, one Deployment) or else
controller.resources is used as it is.
*/}}
{{- define "vpno.controllerResources" -}}
{{- $given := list -}}
{{- $controllers := .Values.controllers | default dict -}}
{{- range $kind := list "masks" "providers" "reservations" "consumers" -}}
{{- $c := get $controllers $kind | default dict -}}
{{- if $c.resources -}}
{{- $given = append $given $c.resources -}}
{{- end -}}
{{- end -}}
{{- if not $given -}}
{{- toYaml (.Values.resources | default .Values.controller.resources | default dict) -}}
{{- else -}}
{{- $requestNames := dict -}}
{{- $limitNames := dict -}}
{{- range $r := $given -}}
{{- range $name, $_ := ($r.requests | default dict) }}{{ $_ := set $requestNames $name true }}{{ end -}}
{{- range $name, $_ := ($r.limits | default dict) }}{{ $_ := set $limitNames $name true }}{{ end -}}
{{- end -}}
{{- $requests := dict -}}
{{- range $name, $_ := $requestNames -}}
{{- $sum := 0.0 -}}
{{- range $r := $given -}}
{{- $req := $r.requests | default dict -}}
{{- if hasKey $req $name }}{{ $sum = addf $sum (include "vpno.milli" (get $req $name)) }}{{ end -}}
{{- end -}}
{{- $_ := set $requests $name (include "vpno.quantity" (dict "name" $name "milli" $sum)) -}}
{{- end -}}
{{- $limits := dict -}}
{{- range $name, $_ := $limitNames -}}
{{- $sum := 0.0 -}}
{{- range $r := $given -}}
{{- $lim := $r.limits | default dict -}}
{{- $req := $r.requests | default dict -}}
{{- if hasKey $lim $name }}{{ $sum = addf $sum (include "vpno.milli" (get $lim $name)) }}
{{- else if hasKey $req $name }}{{ $sum = addf $sum (include "vpno.milli" (get $req $name)) }}{{ end -}}
{{- end -}}
{{- $_ := set $limits $name (include "vpno.quantity" (dict "name" $name "milli" $sum)) -}}
{{- end -}}
{{- $out := dict -}}
{{- if $requests }}{{ $_ := set $out "requests" $requests }}{{ end -}}
{{- if $limits }}{{ $_ := set $out "limits" $limits }}{{ end -}}
{{- toYaml $out -}}
{{- end -}}
{{- end -}}

{{/*
A Kubernetes quantity in thousandths of its unit (cores for cpu, bytes
otherwise), as a decimal string. Accepts a number, or a decimal with one of
the suffixes m, k, M, G, T, Ki, Mi, Gi, Ti (values.schema.json allows no
others for controllers.*.resources). Helm has no quantity arithmetic, hence
this.
*/}}
{{- define "vpno.milli" -}}
{{- if kindIs "string" . -}}
{{- $q := . -}}
{{- $factor := 1000.0 -}}
{{- $units := dict "m" 1.0 "k" 1000000.0 "M" 1000000000.0 "G" 1000000000000.0 "T" 1000000000000000.0 "Ki" 1024000.0 "Mi" 1048576000.0 "Gi" 1073741824000.0 "Ti" 1099511627776000.0 -}}
{{- range $suffix, $f := $units -}}
{{- if hasSuffix $suffix $q -}}
{{- $q = trimSuffix $suffix $q -}}
{{- $factor = $f -}}
{{- end -}}
{{- end -}}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?$" $q) -}}
{{- fail (printf "controllers.*.resources: %q is not a quantity this chart can add up (a number with an optional suffix m, k, M, G, T, Ki, Mi, Gi or Ti)" .) -}}
{{- end -}}
{{- mulf (float64 $q) $factor -}}
{{- else -}}
{{- mulf (float64 .) 1000.0 -}}
{{- end -}}
{{- end -}}

{{/* Formats a sum from vpno.milli: (dict "name" "cpu" "milli" 40.0).
     cpu in cores or millicores; others in bytes with the largest exact
     binary suffix. */}}
{{- define "vpno.quantity" -}}
{{- $m := int64 (round .milli 0) -}}
{{- if eq .name "cpu" -}}
{{- if eq (mod $m 1000) 0 }}{{ div $m 1000 }}{{ else }}{{ $m }}m{{ end -}}
{{- else if ne (mod $m 1000) 0 -}}
{{- $m }}m
{{- else -}}
{{- $b := div $m 1000 -}}
{{- if and (gt $b 0) (eq (mod $b 1099511627776) 0) }}{{ div $b 1099511627776 }}Ti
{{- else if and (gt $b 0) (eq (mod $b 1073741824) 0) }}{{ div $b 1073741824 }}Gi
{{- else if and (gt $b 0) (eq (mod $b 1048576) 0) }}{{ div $b 1048576 }}Mi
{{- else if and (gt $b 0) (eq (mod $b 1024) 0) }}{{ div $b 1024 }}Ki
{{- else }}{{ $b }}{{ end -}}
{{- end -}}
{{- end -}}

{{/* The token lines of the Secret the chart creates: api.tokens.values, or
     the token already stored (upgrades), or a new random one. */}}
{{- define "vpno.apiTokens" -}}
{{- if .Values.api.tokens.values -}}
{{- join "\n" .Values.api.tokens.values }}
{{- else -}}
{{- $existing := lookup "v1" "Secret" (include "vpno.apiNamespace" .) (include "vpno.apiTokenSecret" .) -}}
{{- if and $existing $existing.data (hasKey $existing.data "tokens") -}}
{{- index $existing.data "tokens" | b64dec -}}
{{- else -}}
{{- randAlphaNum 48 -}}
{{- end -}}
{{- end -}}
{{- end -}}
