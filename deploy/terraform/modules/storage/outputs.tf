output "bucket_names" {
  description = "Bucket name per role: landing, lake, mlflow_artifacts, compute_logs."
  value       = { for k, b in aws_s3_bucket.this : k => b.id }
}

output "bucket_arns" {
  description = "Bucket ARN per role (IRSA policies)."
  value       = { for k, b in aws_s3_bucket.this : k => b.arn }
}

output "landing_prefix" {
  description = "Landing-zone key prefix."
  value       = var.landing_prefix
}

output "lake_prefix" {
  description = "Lake key prefix."
  value       = var.lake_prefix
}

output "mlflow_prefix" {
  description = "MLflow artifact key prefix."
  value       = var.mlflow_prefix
}

output "compute_log_prefix" {
  description = "Compute-log key prefix."
  value       = var.compute_log_prefix
}
