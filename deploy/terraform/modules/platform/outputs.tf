# Named for the Helm values they fill (deploy/terraform/outputs_to_values.py maps them; see README).
output "aws_region" {
  description = "AWS_REGION / AWS_DEFAULT_REGION and computeLogManager region."
  value       = data.aws_region.current.region
}

output "postgresql_host" {
  description = "postgresql.postgresqlHost."
  value       = module.metadata.address
}

output "postgresql_username" {
  description = "postgresql.postgresqlUsername."
  value       = module.metadata.username
}

output "postgresql_database" {
  description = "postgresql.postgresqlDatabase (Dagster instance)."
  value       = module.metadata.databases[0]
}

output "mlflow_database" {
  description = "MLflow backend database on the same instance."
  value       = module.metadata.databases[1]
}

output "postgresql_engine_major_version" {
  description = "PostgreSQL major version of RDS."
  value       = module.metadata.engine_major_version
}

output "postgresql_secret_arn" {
  description = "Secrets Manager secret holding the database credentials."
  value       = module.metadata.secret_arn
}

output "landing_bucket" {
  description = "AD_LANDING_URL bucket."
  value       = module.storage.bucket_names["landing"]
}

output "landing_prefix" {
  description = "AD_LANDING_URL key prefix."
  value       = module.storage.landing_prefix
}

output "lake_bucket" {
  description = "AD_LAKE_URL bucket."
  value       = module.storage.bucket_names["lake"]
}

output "lake_prefix" {
  description = "AD_LAKE_URL key prefix."
  value       = module.storage.lake_prefix
}

output "mlflow_artifact_bucket" {
  description = "AD_MLFLOW_ARTIFACTS bucket (MLflow artifact store)."
  value       = module.storage.bucket_names["mlflow_artifacts"]
}

output "mlflow_artifact_prefix" {
  description = "AD_MLFLOW_ARTIFACTS key prefix."
  value       = module.storage.mlflow_prefix
}

output "compute_log_bucket" {
  description = "computeLogManager.config.s3ComputeLogManager.bucket."
  value       = module.storage.bucket_names["compute_logs"]
}

output "compute_log_prefix" {
  description = "computeLogManager.config.s3ComputeLogManager.prefix."
  value       = module.storage.compute_log_prefix
}

output "image_repository" {
  description = "dagster-user-deployments.deployments[0].image.repository."
  value       = aws_ecr_repository.user_code.repository_url
}

output "service_accounts" {
  description = "Service account per workload (serviceAccount.name, dagster-user-deployments.serviceAccount.name, GPU stages)."
  value       = module.identity.service_accounts
}

output "irsa_role_arns" {
  description = "IRSA role per workload (eks.amazonaws.com/role-arn annotations)."
  value       = module.identity.role_arns
}

output "namespace" {
  description = "Namespace of the release (helm --namespace, AD_TRAIN_NAMESPACE)."
  value       = module.k8s_addons.namespace
}

output "kubernetes_secrets" {
  description = "Kubernetes secrets Terraform created (global.postgresqlSecretName, envSecrets, stage env_secrets)."
  value       = module.k8s_addons.secret_names
}

output "cluster_name" {
  description = "EKS cluster (aws eks update-kubeconfig --name ...)."
  value       = module.eks.cluster_name
}

output "cluster_endpoint" {
  description = "EKS API endpoint (private)."
  value       = module.eks.cluster_endpoint
}

output "cluster_ca" {
  description = "EKS cluster CA (base64)."
  value       = module.eks.cluster_ca
}
