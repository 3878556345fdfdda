# The whole platform of one environment, composed from the small modules. envs/<env> only configure
# providers, the state backend and sizes, so dev and prod cannot drift apart structurally.
terraform {
  required_providers {
    aws = { source = "hashicorp/aws", version = "~> 6.0" }
  }
}

data "aws_region" "current" {}

module "kms" {
  source = "../kms"
  name   = var.name
}

module "network" {
  source             = "../network"
  name               = var.name
  cidr               = var.vpc_cidr
  availability_zones = var.availability_zones
  kms_key_arn        = module.kms.key_arn
}

module "eks" {
  source             = "../eks"
  name               = var.name
  subnet_ids         = module.network.private_subnet_ids
  kms_key_arn        = module.kms.key_arn
  cpu_max_size       = var.cpu_max_size
  gpu_max_size       = var.gpu_max_size
  gpu_instance_types = var.gpu_instance_types
}

module "storage" {
  source      = "../storage"
  name        = var.name
  kms_key_arn = module.kms.key_arn
}

module "metadata" {
  source                   = "../metadata"
  name                     = var.name
  vpc_id                   = module.network.vpc_id
  vpc_cidr                 = module.network.vpc_cidr
  subnet_ids               = module.network.private_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  kms_key_arn              = module.kms.key_arn
  instance_class           = var.db_instance_class
  multi_az                 = var.db_multi_az
}

module "identity" {
  source             = "../identity"
  name               = var.name
  namespace          = var.namespace
  oidc_provider_arn  = module.eks.oidc_provider_arn
  oidc_issuer        = module.eks.oidc_issuer
  bucket_arns        = module.storage.bucket_arns
  kms_key_arn        = module.kms.key_arn
  landing_prefix     = module.storage.landing_prefix
  lake_prefix        = module.storage.lake_prefix
  compute_log_prefix = module.storage.compute_log_prefix
}

module "k8s_addons" {
  source    = "../k8s-addons"
  namespace = var.namespace
  region    = data.aws_region.current.region
  stage_service_accounts = {
    for stage in ["train", "compile"] : stage => {
      name     = module.identity.service_accounts[stage]
      role_arn = module.identity.role_arns[stage]
    }
  }
  db_host          = module.metadata.address
  db_port          = module.metadata.port
  db_username      = module.metadata.username
  db_password      = module.metadata.password
  dagster_database = module.metadata.databases[0]
  mlflow_database  = module.metadata.databases[1]
  depends_on       = [module.eks]
}

resource "aws_ecr_repository" "user_code" {
  name                 = "${var.name}/user-code"
  image_tag_mutability = "IMMUTABLE" # runs pin the image of their code location: a tag must never move
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = module.kms.key_arn
  }
}
