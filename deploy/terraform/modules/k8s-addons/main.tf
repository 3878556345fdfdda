# In-cluster pieces Terraform owns: the namespace, the Kubernetes secrets the Helm values and the stage table
# name, service accounts of the GPU stages (the chart creates only its own two) with the train stage's right to
# start its rank pods, the NVIDIA device plugin on the GPU pool, and the MLflow database on the shared RDS
# instance.
terraform {
  required_providers {
    kubernetes = { source = "hashicorp/kubernetes", version = "~> 2.36" }
    helm       = { source = "hashicorp/helm", version = "~> 2.17" }
  }
}

resource "kubernetes_namespace_v1" "this" {
  metadata {
    name = var.namespace
  }
}

# Key MUST be `postgresql-password`: dagster-k8s and the chart read that key (global.postgresqlSecretName).
resource "kubernetes_secret_v1" "postgres" {
  metadata {
    name      = var.postgres_secret_name
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }
  data = {
    "postgresql-password" = var.db_password
  }
}

# envSecrets of every component: with IRSA it carries no keys, only settings boto3 reads from the environment.
resource "kubernetes_secret_v1" "aws" {
  metadata {
    name      = var.aws_secret_name
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }
  data = {
    AWS_REGION                 = var.region
    AWS_DEFAULT_REGION         = var.region
    AWS_STS_REGIONAL_ENDPOINTS = "regional"
  }
}

# envFrom of the compile stage's pods (StageSpec.env_secrets). Created empty: the token never enters the Terraform
# state or the repository; an operator sets it with kubectl (docs/deploy.md, section 5) and Terraform leaves it.
resource "kubernetes_secret_v1" "qaihub" {
  metadata {
    name      = var.qaihub_secret_name
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }
  data = {
    QAIHUB_API_TOKEN = ""
  }
  lifecycle {
    ignore_changes = [data]
  }
}

# envFrom of the pods that use MLflow, the train and compile stages (StageSpec.env_secrets; the trainer rank pods get
# the train stage's envFrom too). The backend is the `mlflow` database on the Dagster RDS instance with the same
# user: that password is in the state already (random_password, the postgres secret above) and every step pod
# holds it, so a second user would separate nothing. Unlike the AI Hub token, the URI is therefore written here,
# complete, and follows a new password on the next apply. Created after the database exists: until then the
# MLflow pods wait (missing secret) instead of starting against no database.
resource "kubernetes_secret_v1" "mlflow" {
  metadata {
    name      = var.mlflow_secret_name
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }
  data = {
    # psycopg2 spelled out: SQLAlchemy >= 2.1 maps a bare postgresql:// to psycopg 3, which is not installed.
    AD_MLFLOW_TRACKING_URI = "postgresql+psycopg2://${var.db_username}:${urlencode(var.db_password)}@${var.db_host}:${var.db_port}/${var.mlflow_database}?sslmode=require"
  }
  depends_on = [kubernetes_job_v1.mlflow_db]
}

resource "kubernetes_service_account_v1" "gpu_stage" {
  for_each = var.stage_service_accounts # stage -> {name, role_arn}
  metadata {
    name      = each.value.name
    namespace = kubernetes_namespace_v1.this.metadata[0].name
    annotations = {
      "eks.amazonaws.com/role-arn" = each.value.role_arn
    }
  }
  automount_service_account_token = true # the IRSA web-identity token is a projected SA token
}

# The train stage's pods start the ranks of a multi-pod training (ad_resources/training.py K8sTrainingLauncher): an
# indexed Job + a headless Service, then rank 0's logs (Pipes) and the pods' states. Exactly those verbs, in the
# release namespace only (tests/deploy/test_terraform.py derives them from the launcher's API calls).
resource "kubernetes_role_v1" "train_launcher" {
  metadata {
    name      = "ad-platform-train-launcher"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }
  rule {
    api_groups = ["batch"]
    resources  = ["jobs"]
    verbs      = ["create", "delete"]
  }
  rule {
    api_groups = ["batch"]
    resources  = ["jobs/status"]
    verbs      = ["get"]
  }
  rule {
    api_groups = [""]
    resources  = ["services"]
    verbs      = ["create", "delete"]
  }
  rule {
    api_groups = [""]
    resources  = ["pods"]
    verbs      = ["list"]
  }
  rule {
    api_groups = [""]
    resources  = ["pods/log"]
    verbs      = ["get"]
  }
}

resource "kubernetes_role_binding_v1" "train_launcher" {
  metadata {
    name      = "ad-platform-train-launcher"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }
  role_ref {
    api_group = "rbac.authorization.k8s.io"
    kind      = "Role"
    name      = kubernetes_role_v1.train_launcher.metadata[0].name
  }
  subject {
    kind      = "ServiceAccount"
    name      = kubernetes_service_account_v1.gpu_stage["train"].metadata[0].name
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }
}

# Advertises nvidia.com/gpu on GPU nodes; tolerates their taint and runs only on the GPU pool.
resource "helm_release" "nvidia_device_plugin" {
  name       = "nvidia-device-plugin"
  repository = "https://nvidia.github.io/k8s-device-plugin"
  chart      = "nvidia-device-plugin"
  version    = var.nvidia_device_plugin_version
  namespace  = "kube-system"

  values = [yamlencode({
    nodeSelector = { (var.pool_label) = "gpu" }
    tolerations = [{
      key      = "nvidia.com/gpu"
      operator = "Exists"
      effect   = "NoSchedule"
    }]
  })]
}

# RDS creates one database (dagster); the MLflow backend database is created once, in-cluster (the DB is
# private), idempotently.
resource "kubernetes_job_v1" "mlflow_db" {
  metadata {
    name      = "create-mlflow-database"
    namespace = kubernetes_namespace_v1.this.metadata[0].name
  }
  spec {
    backoff_limit = 4
    template {
      metadata {}
      spec {
        restart_policy = "OnFailure"
        node_selector  = { (var.pool_label) = "cpu" }
        security_context {
          run_as_non_root = true
          run_as_user     = 70 # postgres user of the alpine image
          seccomp_profile {
            type = "RuntimeDefault"
          }
        }
        container {
          name  = "createdb"
          image = var.postgres_client_image
          command = ["sh", "-c", join(" ", [
            "psql -v ON_ERROR_STOP=1 -tc \"SELECT 1 FROM pg_database WHERE datname = '${var.mlflow_database}'\" | grep -q 1",
            "|| psql -v ON_ERROR_STOP=1 -c 'CREATE DATABASE ${var.mlflow_database}'",
          ])]
          env {
            name  = "PGHOST"
            value = var.db_host
          }
          env {
            name  = "PGUSER"
            value = var.db_username
          }
          env {
            name  = "PGDATABASE"
            value = var.dagster_database
          }
          env {
            name  = "PGSSLMODE"
            value = "require"
          }
          env {
            name = "PGPASSWORD"
            value_from {
              secret_key_ref {
                name = kubernetes_secret_v1.postgres.metadata[0].name
                key  = "postgresql-password"
              }
            }
          }
          resources {
            requests = { cpu = "50m", memory = "64Mi" }
            limits   = { cpu = "200m", memory = "128Mi" }
          }
          security_context {
            allow_privilege_escalation = false
            read_only_root_filesystem  = true
            capabilities {
              drop = ["ALL"]
            }
          }
        }
      }
    }
  }
  wait_for_completion = true
}
