variable "name" {
  description = "Cluster name (= environment name prefix)."
  type        = string
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version; manifests are validated against 1.31 (tests/deploy/test_k8s.py)."
  type        = string
  default     = "1.31"
}

variable "subnet_ids" {
  description = "Private subnets for the control-plane ENIs and the nodes."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key for Kubernetes secrets and the control-plane log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of control-plane logs."
  type        = number
  default     = 365
}

variable "pool_label" {
  description = "Node label selecting a pool; must equal stages.POOL_LABEL."
  type        = string
  default     = "ad-platform/pool"
}

variable "cpu_instance_types" {
  description = "CPU pool instances: m6i.4xlarge = 16 vCPU / 64 GiB, three decode pods at their 4-CPU limit."
  type        = list(string)
  default     = ["m6i.4xlarge"]
}

variable "cpu_min_size" {
  description = "CPU nodes always present (webserver, daemon, code server)."
  type        = number
  default     = 1
}

variable "cpu_max_size" {
  description = "CPU pool ceiling; raise with the decode tag limit in the Helm values."
  type        = number
  default     = 20
}

variable "cpu_disk_gib" {
  description = "Root volume of CPU nodes (ephemeral storage for decode copies)."
  type        = number
  default     = 200
}

variable "gpu_instance_types" {
  description = "GPU pool instances: g5.4xlarge = 1x A10G, 16 vCPU / 64 GiB (train asks 8 CPU / 32-48 GiB)."
  type        = list(string)
  default     = ["g5.4xlarge"]
}

variable "gpu_max_size" {
  description = "GPU pool ceiling; equals the train/compile tag limits in the Helm values."
  type        = number
  default     = 2
}

variable "gpus_per_gpu_node" {
  description = "GPUs per GPU instance (for the autoscaler's scale-from-zero template)."
  type        = number
  default     = 1
}

variable "gpu_disk_gib" {
  description = "Root volume of GPU nodes (train: 50-100Gi ephemeral storage)."
  type        = number
  default     = 300
}
