variable "name" {
  description = "Environment name prefix; bucket names are <name>-<suffix> and must be globally unique."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for SSE-KMS."
  type        = string
}

variable "landing_prefix" {
  description = "Key prefix of the landing zone inside its bucket (AD_LANDING_URL path)."
  type        = string
  default     = "landing"
}

variable "lake_prefix" {
  description = "Key prefix of the lake inside its bucket (AD_LAKE_URL path)."
  type        = string
  default     = "lake"
}

variable "mlflow_prefix" {
  description = "Key prefix of MLflow's artifacts inside their bucket (AD_MLFLOW_ARTIFACTS path)."
  type        = string
  default     = "mlflow"
}

variable "compute_log_prefix" {
  description = "Key prefix of step logs (computeLogManager prefix)."
  type        = string
  default     = "compute-logs"
}

variable "raw_ia_after_days" {
  description = "Days after which raw drives move to STANDARD_IA (minimum 30 for IA)."
  type        = number
  default     = 30
}

variable "tmp_expire_days" {
  description = "Days after which lake tmp/ objects expire."
  type        = number
  default     = 7
}

variable "compute_log_expire_days" {
  description = "Days step logs are kept."
  type        = number
  default     = 90
}

variable "noncurrent_days" {
  description = "Days overwritten/deleted object versions are kept."
  type        = number
  default     = 30
}
