variable "namespace" {
  description = "Namespace of the platform (IRSA trust policies name it)."
  type        = string
}

variable "region" {
  description = "AWS region."
  type        = string
}

variable "pool_label" {
  description = "Node pool label (stages.POOL_LABEL)."
  type        = string
  default     = "ad-platform/pool"
}

variable "postgres_secret_name" {
  description = "values.yaml global.postgresqlSecretName."
  type        = string
  default     = "dagster-postgresql-secret"
}

variable "aws_secret_name" {
  description = "The envSecrets entry of every component in values.yaml."
  type        = string
  default     = "ad-platform-aws"
}

variable "qaihub_secret_name" {
  description = "Secret of the compile stage's pods with QAIHUB_API_TOKEN (stages.QAIHUB_SECRET)."
  type        = string
  default     = "ad-platform-qaihub"
}

variable "mlflow_secret_name" {
  description = "Secret of the train and compile stages' pods with AD_MLFLOW_TRACKING_URI (stages.MLFLOW_SECRET)."
  type        = string
  default     = "ad-platform-mlflow"
}

variable "stage_service_accounts" {
  description = "Service accounts of GPU stages: stage -> {name, role_arn}."
  type        = map(object({ name = string, role_arn = string }))
}

variable "db_host" {
  description = "RDS endpoint."
  type        = string
}

variable "db_port" {
  description = "RDS port."
  type        = number
}

variable "db_username" {
  description = "Database user."
  type        = string
}

variable "db_password" {
  description = "Database password."
  type        = string
  sensitive   = true
}

variable "dagster_database" {
  description = "Database RDS created (connection target of the createdb job)."
  type        = string
}

variable "mlflow_database" {
  description = "MLflow backend database to create."
  type        = string
}

variable "postgres_client_image" {
  description = "Image with psql; pin by digest in production."
  type        = string
  default     = "public.ecr.aws/docker/library/postgres:15.10-alpine"
}

variable "nvidia_device_plugin_version" {
  description = "nvidia-device-plugin chart version."
  type        = string
  default     = "0.17.1"
}
