# Root module of the prod environment: providers, state backend, sizes. Everything else is modules/platform.
terraform {
  required_version = ">= 1.11"
  required_providers {
    aws        = { source = "hashicorp/aws", version = "~> 6.0" }
    random     = { source = "hashicorp/random", version = "~> 3.7" }
    kubernetes = { source = "hashicorp/kubernetes", version = "~> 2.36" }
    helm       = { source = "hashicorp/helm", version = "~> 2.17" }
  }
  # State in S3 with native locking; the bucket is bootstrapped once per account (README). Partial config:
  #   terraform init -backend-config="bucket=<state bucket>" -backend-config="region=<region>"
  backend "s3" {
    key          = "ad-platform/prod/terraform.tfstate"
    encrypt      = true
    use_lockfile = true
  }
}

provider "aws" {
  region = var.region
  default_tags {
    tags = {
      project     = "ad-fleet-platform"
      environment = "prod"
      managed-by  = "terraform"
    }
  }
}

# The EKS API endpoint is private: run terraform from inside the VPC (bastion, VPN, CI runner there).
provider "kubernetes" {
  host                   = module.platform.cluster_endpoint
  cluster_ca_certificate = base64decode(module.platform.cluster_ca)
  exec {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.platform.cluster_name, "--region", var.region]
  }
}

provider "helm" {
  kubernetes {
    host                   = module.platform.cluster_endpoint
    cluster_ca_certificate = base64decode(module.platform.cluster_ca)
    exec {
      api_version = "client.authentication.k8s.io/v1beta1"
      command     = "aws"
      args        = ["eks", "get-token", "--cluster-name", module.platform.cluster_name, "--region", var.region]
    }
  }
}

module "platform" {
  source             = "../../modules/platform"
  name               = var.name
  vpc_cidr           = var.vpc_cidr
  availability_zones = var.availability_zones
  cpu_max_size       = var.cpu_max_size
  gpu_max_size       = var.gpu_max_size
  gpu_instance_types = var.gpu_instance_types
  db_instance_class  = var.db_instance_class
  db_multi_az        = var.db_multi_az
}
