variable "region" {
  description = "AWS region."
  type        = string
}

variable "name" {
  description = "Environment name prefix (bucket names <name>-landing, ... must be globally unique)."
  type        = string
}

variable "vpc_cidr" {
  description = "VPC CIDR."
  type        = string
}

variable "cpu_max_size" {
  description = "CPU pool ceiling."
  type        = number
}

variable "gpu_max_size" {
  description = "GPU pool ceiling."
  type        = number
}

variable "gpu_instance_types" {
  description = "GPU instance types."
  type        = list(string)
}

variable "db_instance_class" {
  description = "RDS instance class."
  type        = string
}

variable "db_multi_az" {
  description = "RDS Multi-AZ."
  type        = bool
}

variable "availability_zones" {
  description = "Availability zones of the VPC subnets."
  type        = list(string)
}
