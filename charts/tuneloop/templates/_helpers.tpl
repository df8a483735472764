{{/* Names and labels. */}}
{{- define "tuneloop.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 50 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "tuneloop.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "serve"). */}}
{{- define "tuneloop.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "tuneloop.workspaceClaim" -}}
{{- .Values.workspace.existingClaim | default (printf "%s-workspace" (include "tuneloop.fullname" .)) -}}
{{- end -}}

{{/* Fully qualified: the pipeline's steps may run in another namespace. */}}
{{- define "tuneloop.mlflowUrl" -}}
{{- printf "http://%s-mlflow.%s.svc.cluster.local:5000" (include "tuneloop.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* The platform config with the keys the chart owns filled in, as YAML. */}}
{{- define "tuneloop.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $data := get $config "data" | default dict -}}
{{- if not (get $data "repo") -}}
{{- fail "config.data.repo is required: the git URL of the data repository (git + DVC) the pipeline's pods clone" -}}
{{- end -}}
{{- $owned := dict
    "serve" (dict "host" "0.0.0.0" "port" 8080 "log" (printf "%s/traffic/traffic.jsonl" .Values.workspace.mountPath))
    "runtime" (dict "mode" "kfp" "namespace" .Release.Namespace "kubernetes" (dict "workspace_pvc" (include "tuneloop.workspaceClaim" .) "workspace_path" .Values.workspace.mountPath)) -}}
{{- if .Values.mlflow.enabled -}}
{{- $_ := set $owned "registry" (dict "tracking_uri" (include "tuneloop.mlflowUrl" .)) -}}
{{- end -}}
{{- toYaml (mergeOverwrite $config $owned) -}}
{{- end -}}

{{/* Pod-level security: non-root, the image's uid, seccomp RuntimeDefault. */}}
{{- define "tuneloop.podSecurity" -}}
automountServiceAccountToken: false
securityContext:
  runAsNonRoot: true
  runAsUser: {{ .uid | default 10001 }}
  runAsGroup: {{ .uid | default 10001 }}
  fsGroup: {{ .uid | default 10001 }}
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{/* Container-level security: read-only root, no privilege escalation, no capabilities. */}}
{{- define "tuneloop.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  privileged: false
  capabilities:
    drop: [ALL]
{{- end -}}

{{/* A tuneloop container's environment: HOME on the writable /tmp (the root filesystem is read-only;
kfp and MLflow write small files there) and the Secrets named in config.runtime.kubernetes.secrets. */}}
{{- define "tuneloop.env" -}}
- name: HOME
  value: /tmp
{{- $k8s := (get (get .Values.config "runtime" | default dict) "kubernetes") | default dict -}}
{{- range $secret := (get $k8s "secrets" | default list) }}
{{- range $variable, $key := $secret.env }}
- name: {{ $variable }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret.secret }}
      key: {{ $key }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A tuneloop container: the image from config.runtime.image and the config and workspace mounts. */}}
{{- define "tuneloop.image" -}}
image: {{ .Values.config.runtime.image | quote }}
imagePullPolicy: {{ (get (get .Values.config.runtime "kubernetes" | default dict) "image_pull_policy") | default "IfNotPresent" }}
{{- end -}}

{{/* The config and /tmp; with (dict "root" $ "workspace" true), the workspace claim too. */}}
{{- define "tuneloop.mounts" -}}
- name: config
  mountPath: /etc/tuneloop
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .workspace }}
- name: workspace
  mountPath: {{ .root.Values.workspace.mountPath }}
{{- end }}
{{- end -}}

{{- define "tuneloop.volumes" -}}
- name: config
  configMap:
    name: {{ include "tuneloop.fullname" .root }}-config
- name: tmp
  emptyDir:
    sizeLimit: 2Gi
{{- if .workspace }}
- name: workspace
  persistentVolumeClaim:
    claimName: {{ include "tuneloop.workspaceClaim" .root }}
{{- end }}
{{- end -}}

{{- define "tuneloop.pullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The KFP token a pod that submits to Kubeflow Pipelines presents: this ServiceAccount's token
for the pipelines audience, where tuneloop (and kfp) read it. */}}
{{- define "tuneloop.kfpTokenMount" -}}
- name: kfp-token
  mountPath: /var/run/secrets/kubeflow/pipelines
  readOnly: true
{{- end -}}

{{- define "tuneloop.kfpTokenVolume" -}}
- name: kfp-token
  projected:
    sources:
      - serviceAccountToken:
          path: token
          audience: pipelines.kubeflow.org
          expirationSeconds: 7200
{{- end -}}
