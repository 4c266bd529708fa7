{{/* The chart name, cut to the 63 characters of a label value. */}}
{{- define "quanttrain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release-qualified name shared by every object of the release. */}}
{{- define "quanttrain.fullname" -}}
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

{{- define "quanttrain.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "quanttrain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quanttrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "quanttrain.labels" -}}
helm.sh/chart: {{ include "quanttrain.chart" . }}
{{ include "quanttrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quanttrain
{{- end }}

{{- define "quanttrain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "quanttrain.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The namespaces the operator watches: watchNamespaces, or the release namespace. */}}
{{- define "quanttrain.watchNamespaces" -}}
{{- $namespaces := .Values.watchNamespaces | default (list .Release.Namespace) }}
{{- $namespaces | uniq | toJson }}
{{- end }}

{{/* An image reference: repository@digest when a digest is set, else repository:tag. */}}
{{- define "quanttrain.image" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (.image.tag | default .appVersion) }}
{{- end }}
{{- end }}

{{- define "quanttrain.operatorImage" -}}
{{- include "quanttrain.image" (dict "image" .Values.operator.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "quanttrain.trainerImage" -}}
{{- include "quanttrain.image" (dict "image" .Values.trainer.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/*
The operator's permissions in a watched namespace.  Every verb has a user:
  mltrainingjobs: watch and reconcile them, and patch kopf's finalizer and progress annotations;
  mltrainingjobs/status: write phase, conditions and the evaluation;
  jobs: one Indexed Job per MLTrainingJob, patched to resume it from suspend;
  services, configmaps: the headless Service and the spec ConfigMap of each job;
  events: Events on the MLTrainingJob for launch, retries, success and failure;
  pods: read the trainer's termination message, label each pod with its replica
    index, and delete pods that outlive their job;
  podgroups (trainer.gangScheduling only): one Volcano PodGroup per distributed job.
*/}}
{{- define "quanttrain.operatorRules" -}}
- apiGroups: ["quanttrain.io"]
  resources: ["mltrainingjobs"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["quanttrain.io"]
  resources: ["mltrainingjobs/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch", "delete"]
{{- if .Values.trainer.gangScheduling }}
- apiGroups: ["scheduling.volcano.sh"]
  resources: ["podgroups"]
  verbs: ["get", "create", "delete"]
{{- end }}
{{- end }}
