# IAM roles for service accounts (IRSA), one per workload, least privilege: each policy names only the
# buckets and key prefixes its workload touches, and the environment's KMS key. No `*` resource anywhere
# (tests/deploy/test_terraform.py fails on one).
#
#   user_code  code server + every run/step pod it launches (the chart gives them the user-deployments SA)
#   dagster    webserver + daemon (read/write step logs only)
#   train      GPU training steps (reads the lake, writes models and MLflow artifacts)
#   compile    GPU engine compile steps (reads models, writes engines)
terraform {
  required_providers {
    aws = { source = "hashicorp/aws", version = "~> 6.0" }
  }
}

locals {
  service_accounts = {
    user_code = var.user_code_service_account
    dagster   = var.dagster_service_account
    train     = var.train_service_account
    compile   = var.compile_service_account
  }
  landing = var.bucket_arns["landing"]
  lake    = var.bucket_arns["lake"]
  mlflow  = var.bucket_arns["mlflow_artifacts"]
  logs    = var.bucket_arns["compute_logs"]
}

data "aws_iam_policy_document" "assume" {
  for_each = local.service_accounts
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${each.value}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "this" {
  for_each           = local.service_accounts
  name               = "${var.name}-${replace(each.key, "_", "-")}"
  assume_role_policy = data.aws_iam_policy_document.assume[each.key].json
}

# --- user_code: landing (read + quarantine copy/delete), lake (read/write/delete), own step logs -------------
data "aws_iam_policy_document" "user_code" {
  statement {
    sid       = "ListOwnPrefixes"
    actions   = ["s3:ListBucket"]
    resources = [local.landing, local.lake, local.logs]
  }
  statement {
    sid     = "LandingReadQuarantine"
    actions = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = [
      "${local.landing}/${var.landing_prefix}/*",
    ]
  }
  statement {
    sid       = "LakeReadWrite"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${local.lake}/${var.lake_prefix}/*"]
  }
  statement {
    sid       = "StepLogsWrite"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${local.logs}/${var.compute_log_prefix}/*"]
  }
  statement {
    sid       = "Kms"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

# --- dagster: webserver reads step logs, daemon writes its own -------------------------------------------------
data "aws_iam_policy_document" "dagster" {
  statement {
    sid       = "ListLogs"
    actions   = ["s3:ListBucket"]
    resources = [local.logs]
  }
  statement {
    sid       = "StepLogs"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${local.logs}/${var.compute_log_prefix}/*"]
  }
  statement {
    sid       = "Kms"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

# --- train: read the lake, write models; MLflow artifacts read/write -----------------------------------------
data "aws_iam_policy_document" "train" {
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket"]
    resources = [local.lake, local.mlflow, local.logs]
  }
  statement {
    sid       = "LakeRead"
    actions   = ["s3:GetObject"]
    resources = ["${local.lake}/${var.lake_prefix}/*"]
  }
  statement {
    sid       = "ModelsWrite"
    actions   = ["s3:PutObject"]
    resources = ["${local.lake}/${var.lake_prefix}/models/*"]
  }
  statement {
    sid       = "MlflowArtifacts"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${local.mlflow}/*"]
  }
  statement {
    sid       = "StepLogsWrite"
    actions   = ["s3:PutObject"]
    resources = ["${local.logs}/${var.compute_log_prefix}/*"]
  }
  statement {
    sid       = "Kms"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

# --- compile: read models, write engines; read MLflow artifacts ---------------------------------------------
data "aws_iam_policy_document" "compile" {
  statement {
    sid       = "List"
    actions   = ["s3:ListBucket"]
    resources = [local.lake, local.mlflow, local.logs]
  }
  statement {
    sid       = "ModelsRead"
    actions   = ["s3:GetObject"]
    resources = ["${local.lake}/${var.lake_prefix}/models/*"]
  }
  statement {
    sid       = "EnginesWrite"
    actions   = ["s3:PutObject"]
    resources = ["${local.lake}/${var.lake_prefix}/engines/*"]
  }
  statement {
    sid       = "MlflowRead"
    actions   = ["s3:GetObject"]
    resources = ["${local.mlflow}/*"]
  }
  statement {
    sid       = "StepLogsWrite"
    actions   = ["s3:PutObject"]
    resources = ["${local.logs}/${var.compute_log_prefix}/*"]
  }
  statement {
    sid       = "Kms"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

locals {
  policies = {
    user_code = data.aws_iam_policy_document.user_code.json
    dagster   = data.aws_iam_policy_document.dagster.json
    train     = data.aws_iam_policy_document.train.json
    compile   = data.aws_iam_policy_document.compile.json
  }
}

resource "aws_iam_role_policy" "this" {
  for_each = local.policies
  name     = "s3-least-privilege"
  role     = aws_iam_role.this[each.key].id
  policy   = each.value
}
