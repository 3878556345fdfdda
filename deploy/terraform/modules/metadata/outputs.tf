output "address" {
  description = "RDS endpoint host name."
  value       = aws_db_instance.this.address
}

output "port" {
  description = "RDS port."
  value       = aws_db_instance.this.port
}

output "username" {
  description = "Database user."
  value       = var.username
}

output "databases" {
  description = "Databases: dagster instance, MLflow backend."
  value       = var.databases
}

output "engine_major_version" {
  description = "PostgreSQL major version."
  value       = local.engine_major
}

output "secret_arn" {
  description = "Secrets Manager secret with the credentials."
  value       = aws_secretsmanager_secret.db.arn
}

output "password" {
  description = "Database password (for the in-cluster Kubernetes secret)."
  value       = random_password.master.result
  sensitive   = true
}
