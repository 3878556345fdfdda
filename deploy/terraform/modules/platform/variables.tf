variable "name" {
  description = "Environment name prefix: cluster, buckets (<name>-landing, ...), roles, database."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the Helm release."
  type        = string
  default     = "dagster"
}

variable "vpc_cidr" {
  description = "VPC CIDR."
  type        = string
  default     = "10.40.0.0/16"
}

variable "cpu_max_size" {
  description = "CPU pool ceiling."
  type        = number
  default     = 20
}

variable "gpu_max_size" {
  description = "GPU pool ceiling (= train/compile tag limits in the Helm values)."
  type        = number
  default     = 2
}

variable "gpu_instance_types" {
  description = "GPU instance types."
  type        = list(string)
  default     = ["g5.4xlarge"]
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.m6g.large"
}

variable "db_multi_az" {
  description = "RDS Multi-AZ."
  type        = bool
  default     = true
}

variable "availability_zones" {
  description = "Availability zones of the VPC subnets."
  type        = list(string)
}
