# Passed through from modules/platform: `terraform output -json` feeds deploy/terraform/outputs_to_values.py.
output "aws_region" {
  description = "AWS_REGION / AWS_DEFAULT_REGION and computeLogManager region."
  value       = module.platform.aws_region
}

output "postgresql_host" {
  description = "postgresql.postgresqlHost."
  value       = module.platform.postgresql_host
}

output "postgresql_username" {
  description = "postgresql.postgresqlUsername."
  value       = module.platform.postgresql_username
}

output "postgresql_database" {
  description = "postgresql.postgresqlDatabase (Dagster instance)."
  value       = module.platform.postgresql_database
}

output "mlflow_database" {
  description = "MLflow backend database on the same instance."
  value       = module.platform.mlflow_database
}

output "postgresql_engine_major_version" {
  description = "PostgreSQL major version of RDS."
  value       = module.platform.postgresql_engine_major_version
}

output "postgresql_secret_arn" {
  description = "Secrets Manager secret holding the database credentials."
  value       = module.platform.postgresql_secret_arn
}

output "landing_bucket" {
  description = "AD_LANDING_URL bucket."
  value       = module.platform.landing_bucket
}

output "landing_prefix" {
  description = "AD_LANDING_URL key prefix."
  value       = module.platform.landing_prefix
}

output "lake_bucket" {
  description = "AD_LAKE_URL bucket."
  value       = module.platform.lake_bucket
}

output "lake_prefix" {
  description = "AD_LAKE_URL key prefix."
  value       = module.platform.lake_prefix
}

output "mlflow_artifact_bucket" {
  description = "AD_MLFLOW_ARTIFACTS bucket (MLflow artifact store)."
  value       = module.platform.mlflow_artifact_bucket
}

output "mlflow_artifact_prefix" {
  description = "AD_MLFLOW_ARTIFACTS key prefix."
  value       = module.platform.mlflow_artifact_prefix
}

output "compute_log_bucket" {
  description = "computeLogManager.config.s3ComputeLogManager.bucket."
  value       = module.platform.compute_log_bucket
}

output "compute_log_prefix" {
  description = "computeLogManager.config.s3ComputeLogManager.prefix."
  value       = module.platform.compute_log_prefix
}

output "image_repository" {
  description = "dagster-user-deployments.deployments[0].image.repository."
  value       = module.platform.image_repository
}

output "service_accounts" {
  description = "Service account per workload (serviceAccount.name, dagster-user-deployments.serviceAccount.name, GPU stages)."
  value       = module.platform.service_accounts
}

output "irsa_role_arns" {
  description = "IRSA role per workload (eks.amazonaws.com/role-arn annotations)."
  value       = module.platform.irsa_role_arns
}

output "namespace" {
  description = "Namespace of the release (helm --namespace, AD_TRAIN_NAMESPACE)."
  value       = module.platform.namespace
}

output "kubernetes_secrets" {
  description = "Kubernetes secrets Terraform created (global.postgresqlSecretName, envSecrets, stage env_secrets)."
  value       = module.platform.kubernetes_secrets
}

output "cluster_name" {
  description = "EKS cluster (aws eks update-kubeconfig --name ...)."
  value       = module.platform.cluster_name
}

output "cluster_endpoint" {
  description = "EKS API endpoint (private)."
  value       = module.platform.cluster_endpoint
}

output "cluster_ca" {
  description = "EKS cluster CA (base64)."
  value       = module.platform.cluster_ca
}
