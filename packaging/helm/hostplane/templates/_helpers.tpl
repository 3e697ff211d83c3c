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
Values that cannot work together are refused at render time, naming them
(the schema checks each value alone). Included by the Deployment.
*/}}
{{- define "hostplane.checkStore" -}}
{{- $store := .Values.coordinator.store -}}
{{- $pg := $store.postgres -}}
{{- $replicas := int .Values.coordinator.replicas -}}
{{- if eq $store.backend "sqlite" -}}
{{- if gt $replicas 1 -}}
{{- fail (printf "coordinator.replicas is %d, but coordinator.store.backend sqlite runs exactly 1 replica: a SQLite file has one writer. Set coordinator.store.backend=postgres for several replicas (docs/operations.md, Kubernetes), or coordinator.replicas=1" $replicas) -}}
{{- end -}}
{{- if $pg.cloudnativepg.enabled -}}
{{- fail "coordinator.store.postgres.cloudnativepg.enabled needs coordinator.store.backend=postgres: with sqlite nothing would use the Cluster" -}}
{{- end -}}
{{- if (.Values.coordinator.config.store | default dict).postgres -}}
{{- fail "coordinator.config.store.postgres is set but coordinator.store.backend is sqlite: the coordinator refuses a postgres section on sqlite. Set coordinator.store.backend=postgres, or remove it" -}}
{{- end -}}
{{- else -}}
{{- $sources := 0 -}}
{{- if $pg.password }}{{ $sources = add1 $sources }}{{ end -}}
{{- if $pg.existingSecret.name }}{{ $sources = add1 $sources }}{{ end -}}
{{- if $pg.cloudnativepg.enabled -}}
{{- if $pg.url -}}
{{- fail "coordinator.store.postgres.url must be empty with coordinator.store.postgres.cloudnativepg.enabled: the chart points the coordinator at the Cluster it renders" -}}
{{- end -}}
{{- if $sources -}}
{{- fail "coordinator.store.postgres.password and .existingSecret.name must be empty with coordinator.store.postgres.cloudnativepg.enabled: the password is the Cluster's, from its Secret <name>-app" -}}
{{- end -}}
{{- else -}}
{{- if not $pg.url -}}
{{- fail "coordinator.store.backend is postgres: set coordinator.store.postgres.url (postgres://USER@HOST:5432/DATABASE, no password), or coordinator.store.postgres.cloudnativepg.enabled=true for a Cluster rendered by the chart" -}}
{{- end -}}
{{- if regexMatch "^[a-zA-Z]+://[^/@?]*:[^/@?]*@|password=" $pg.url -}}
{{- fail "coordinator.store.postgres.url carries a password: remove it and put it in coordinator.store.postgres.existingSecret (a Secret of yours) or coordinator.store.postgres.password" -}}
{{- end -}}
{{- if contains "sslmode" $pg.url -}}
{{- fail "coordinator.store.postgres.url sets sslmode: remove it from the URL and set coordinator.store.postgres.sslmode (the chart writes store.postgres.sslmode)" -}}
{{- end -}}
{{- if not (regexMatch "^postgres(ql)?://" $pg.url) -}}
{{- fail (printf "coordinator.store.postgres.url %q is not a postgres:// or postgresql:// URL" $pg.url) -}}
{{- end -}}
{{- if gt $sources 1 -}}
{{- fail "coordinator.store.postgres.password and coordinator.store.postgres.existingSecret.name are both set: give the password one way" -}}
{{- end -}}
{{- if and (eq $sources 0) (not $pg.clientCertSecret) -}}
{{- fail "coordinator.store.backend is postgres but no password is given: set coordinator.store.postgres.existingSecret.name (a Secret of yours, key existingSecret.key) or coordinator.store.postgres.password, or a client certificate (coordinator.store.postgres.clientCertSecret)" -}}
{{- end -}}
{{- if and (hasPrefix "verify-" $pg.sslmode) (not $pg.caSecret) -}}
{{- fail (printf "coordinator.store.postgres.sslmode %s checks the server's certificate: set coordinator.store.postgres.caSecret (a Secret with ca.crt), or another sslmode" $pg.sslmode) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Where the coordinator's PostgreSQL settings come from, as YAML (read back
with fromYaml): url, and the Secrets (with their keys) mounted under
/etc/hostplane/postgres/. With cloudnativepg: the Cluster's Service, its
app Secret and its CA.
*/}}
{{- define "hostplane.postgres" -}}
{{- $pg := .Values.coordinator.store.postgres -}}
{{- $out := dict "url" $pg.url "caSecret" $pg.caSecret "clientCertSecret" $pg.clientCertSecret -}}
{{- if $pg.cloudnativepg.enabled -}}
{{- $c := $pg.cloudnativepg -}}
{{- $_ := set $out "url" (printf "postgresql://%s@%s-rw.%s.svc:5432/%s" $c.owner $c.name (include "hostplane.namespace" .) $c.database) -}}
{{- $_ := set $out "passwordSecret" (printf "%s-app" $c.name) -}}
{{- $_ := set $out "passwordKey" "password" -}}
{{- if not $pg.caSecret -}}
{{- $_ := set $out "caSecret" (printf "%s-ca" $c.name) -}}
{{- end -}}
{{- else if $pg.existingSecret.name -}}
{{- $_ := set $out "passwordSecret" $pg.existingSecret.name -}}
{{- $_ := set $out "passwordKey" $pg.existingSecret.key -}}
{{- else if $pg.password -}}
{{- $_ := set $out "passwordSecret" "hostplane-coordinator-postgres" -}}
{{- $_ := set $out "passwordKey" "password" -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
coordinator.yaml: the values' coordinator.config with the keys the chart
owns (they must agree with the mounts and the port) laid over it.
*/}}
{{- define "hostplane.coordinatorConfig" -}}
{{- $store := dict "path" "/var/lib/hostplane-coordinator/coordinator.db" -}}
{{- if eq .Values.coordinator.store.backend "postgres" -}}
{{- $src := include "hostplane.postgres" . | fromYaml -}}
{{- $pg := dict
  "url" $src.url
  "sslmode" .Values.coordinator.store.postgres.sslmode
  "pool" (int .Values.coordinator.store.postgres.pool) -}}
{{- if $src.passwordSecret -}}
{{- $_ := set $pg "password_file" "/etc/hostplane/postgres/password" -}}
{{- end -}}
{{- if $src.caSecret -}}
{{- $_ := set $pg "ca_file" "/etc/hostplane/postgres/ca.crt" -}}
{{- end -}}
{{- if $src.clientCertSecret -}}
{{- $_ := set $pg "cert_file" "/etc/hostplane/postgres/tls.crt" -}}
{{- $_ := set $pg "key_file" "/etc/hostplane/postgres/tls.key" -}}
{{- end -}}
{{- $store = dict "backend" "postgres" "postgres" $pg -}}
{{- end -}}
{{- $owned := dict
  "listen" (printf "0.0.0.0:%d" (int .Values.coordinator.port))
  "store" $store
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
