variable "name" {
  description = "Environment name prefix (role names <name>-<workload>)."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the platform."
  type        = string
}

variable "oidc_provider_arn" {
  description = "IAM OIDC provider of the EKS cluster."
  type        = string
}

variable "oidc_issuer" {
  description = "OIDC issuer without https://."
  type        = string
}

variable "bucket_arns" {
  description = "Bucket ARN per role: landing, lake, mlflow_artifacts, compute_logs."
  type        = map(string)
}

variable "kms_key_arn" {
  description = "KMS key of the buckets (SSE-KMS needs Decrypt/GenerateDataKey)."
  type        = string
}

variable "landing_prefix" {
  description = "Landing-zone key prefix."
  type        = string
}

variable "lake_prefix" {
  description = "Lake key prefix."
  type        = string
}

variable "compute_log_prefix" {
  description = "Compute-log key prefix."
  type        = string
}

variable "user_code_service_account" {
  description = "Service account of the code server and its run/step pods (dagster-user-deployments.serviceAccount.name)."
  type        = string
  default     = "ad-platform-user-code"
}

variable "dagster_service_account" {
  description = "Service account of webserver and daemon (serviceAccount.name)."
  type        = string
  default     = "ad-platform-dagster"
}

variable "train_service_account" {
  description = "Service account of train step pods."
  type        = string
  default     = "ad-platform-train"
}

variable "compile_service_account" {
  description = "Service account of compile step pods."
  type        = string
  default     = "ad-platform-compile"
}
