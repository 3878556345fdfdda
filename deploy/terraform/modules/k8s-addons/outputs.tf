output "namespace" {
  description = "Platform namespace."
  value       = kubernetes_namespace_v1.this.metadata[0].name
}

output "secret_names" {
  description = "Kubernetes secrets created: postgres password, AWS settings, AI Hub token (empty until set), MLflow URI."
  value = [
    kubernetes_secret_v1.postgres.metadata[0].name,
    kubernetes_secret_v1.aws.metadata[0].name,
    kubernetes_secret_v1.qaihub.metadata[0].name,
    kubernetes_secret_v1.mlflow.metadata[0].name,
  ]
}
