variable "name" {
  description = "Environment name prefix."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the database."
  type        = string
}

variable "vpc_cidr" {
  description = "VPC CIDR (egress stays inside)."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the DB subnet group."
  type        = list(string)
}

variable "client_security_group_id" {
  description = "Security group allowed to connect (the EKS cluster security group: nodes and pods)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for storage, Performance Insights and the secret."
  type        = string
}

variable "username" {
  description = "Database user; values.yaml postgresql.postgresqlUsername."
  type        = string
  default     = "dagster"
}

variable "databases" {
  description = "Databases: the first is created by RDS (Dagster instance), the others in-cluster (MLflow)."
  type        = list(string)
  default     = ["dagster", "mlflow"]
}

variable "instance_class" {
  description = "Instance class; size for connections (every run/step pod opens a pool)."
  type        = string
  default     = "db.m6g.large"
}

variable "allocated_storage_gib" {
  description = "Initial storage."
  type        = number
  default     = 100
}

variable "max_allocated_storage_gib" {
  description = "Storage autoscaling ceiling (event logs grow with runs)."
  type        = number
  default     = 1000
}

variable "multi_az" {
  description = "Standby in a second AZ."
  type        = bool
  default     = true
}

variable "backup_retention_days" {
  description = "Automated backup retention."
  type        = number
  default     = 14
}
