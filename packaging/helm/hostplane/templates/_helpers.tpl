{{/*
Names are fixed, as in packaging/kubernetes/: the coordinator's certificate
names hostplane-coordinator.<namespace>.svc, and the agents dial that name.
*/}}

{{/* The namespace of every object: namespace.name, or the release's. */}}
{{- define "hostplane.namespace" -}}
{{- .Values.namespace.name | default .Release.Namespace -}}
{{- end -}}

{{/* Labels every object carries. */}}
{{- define "hostplane.labels" -}}
app.kubernetes.io/part-of: hostplane
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of a component; pass the component's name. */}}
{{- define "hostplane.selectorLabels" -}}
app.kubernetes.io/name: {{ . }}
{{- end -}}

{{/* An image reference; pass (dict "image" .Values.x.image "root" $). */}}
{{- define "hostplane.image" -}}
{{- printf "%s:%s" .image.repository (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}

{{/* The coordinator's URL as the agents dial it. */}}
{{- define "hostplane.coordinatorURL" -}}
{{- printf "https://hostplane-coordinator.%s.svc:%d" (include "hostplane.namespace" .) (int .Values.coordinator.port) -}}
{{- end -}}

{{/*
coordinator.yaml: the values' coordinator.config with the keys the chart
owns (they must agree with the mounts and the port) laid over it.
*/}}
{{- define "hostplane.coordinatorConfig" -}}
{{- $owned := dict
  "listen" (printf "0.0.0.0:%d" (int .Values.coordinator.port))
  "store" (dict "path" "/var/lib/hostplane-coordinator/coordinator.db")
  "tls" (dict
    "cert_file" "/etc/hostplane/tls/tls.crt"
    "key_file" "/etc/hostplane/tls/tls.key"
    "client_ca_file" "/etc/hostplane/tls/ca.crt") -}}
{{- if .Values.coordinator.tokensSecret -}}
{{- $_ := set $owned "auth" (dict "tokens_file" "/etc/hostplane/auth/tokens.yaml") -}}
{{- end -}}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.coordinator.config) $owned) -}}
{{- end -}}

{{/*
agent.yaml: the chart's defaults, then the values' agent.config, then the
keys the chart owns (mounts, the coordinator's Service, the probe's address).
*/}}
{{- define "hostplane.agentConfig" -}}
{{- $defaults := dict "cache" (dict "dir" "/var/lib/hostplane-agent/cache") -}}
{{- $owned := dict
  "coordinator" (include "hostplane.coordinatorURL" .)
  "tls" (dict
    "ca_file" "/etc/hostplane/tls/ca.crt"
    "cert_file" "/etc/hostplane/tls/agent.crt"
    "key_file" "/etc/hostplane/tls/agent.key")
  "state_dir" "/var/lib/hostplane-agent"
  "dev_root" "/dev"
  "metrics" (dict "listen" .Values.agent.metricsListen) -}}
{{- toYaml (mustMergeOverwrite $defaults (deepCopy .Values.agent.config) $owned) -}}
{{- end -}}
