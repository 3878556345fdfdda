output "role_arns" {
  description = "IRSA role ARN per workload: user_code, dagster, train, compile."
  value       = { for k, r in aws_iam_role.this : k => r.arn }
}

output "service_accounts" {
  description = "Kubernetes service account per workload."
  value       = local.service_accounts
}
