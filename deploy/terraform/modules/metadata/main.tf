# RDS PostgreSQL for the Dagster instance (database `dagster`) and the MLflow backend (database `mlflow`,
# created in-cluster by modules/k8s-addons: RDS creates only one database itself). Encrypted, private,
# Multi-AZ, TLS forced, backups and deletion protection on; the password lives in Secrets Manager.
# The engine's major version must equal the PostgreSQL the tests run against (tests/test_postgres_instance.py).
terraform {
  required_providers {
    aws    = { source = "hashicorp/aws", version = "~> 6.0" }
    random = { source = "hashicorp/random", version = "~> 3.7" }
  }
}

locals {
  engine_major = "15"
}

resource "random_password" "master" {
  length  = 40
  special = false # goes into a SQLAlchemy URL; alphanumerics avoid URL-escaping bugs
}

resource "aws_secretsmanager_secret" "db" {
  #checkov:skip=CKV2_AWS_57:Rotation needs a rotation Lambda and a pod restart plan (pods read the password at start); rotate by re-applying with a new random_password
  name        = "${var.name}/rds/dagster"
  description = "PostgreSQL credentials of ${var.name} (Dagster instance + MLflow backend)."
  kms_key_id  = var.kms_key_arn
}

resource "aws_secretsmanager_secret_version" "db" {
  secret_id = aws_secretsmanager_secret.db.id
  secret_string = jsonencode({
    username  = var.username
    password  = random_password.master.result
    host      = aws_db_instance.this.address
    port      = aws_db_instance.this.port
    databases = var.databases
  })
}

resource "aws_db_subnet_group" "this" {
  name       = "${var.name}-db"
  subnet_ids = var.subnet_ids
}

resource "aws_security_group" "db" {
  name        = "${var.name}-db"
  description = "PostgreSQL from the EKS cluster security group only"
  vpc_id      = var.vpc_id

  ingress {
    description     = "PostgreSQL from EKS nodes and pods"
    from_port       = 5432
    to_port         = 5432
    protocol        = "tcp"
    security_groups = [var.client_security_group_id]
  }

  egress {
    description = "Responses only stay inside the VPC"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = [var.vpc_cidr]
  }
}

resource "aws_db_parameter_group" "this" {
  name   = "${var.name}-pg${local.engine_major}"
  family = "postgres${local.engine_major}"

  parameter {
    name  = "rds.force_ssl"
    value = "1" # values.yaml sets sslmode=require
  }
  parameter {
    name  = "log_min_duration_statement"
    value = "1000" # slow queries (event-log scans) in CloudWatch Logs
  }
  parameter {
    name  = "log_statement"
    value = "ddl"
  }
}

data "aws_iam_policy_document" "monitoring_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["monitoring.rds.amazonaws.com"]
    }
  }
}

data "aws_partition" "current" {}

resource "aws_iam_role" "monitoring" {
  name               = "${var.name}-rds-monitoring"
  assume_role_policy = data.aws_iam_policy_document.monitoring_assume.json
}

resource "aws_iam_role_policy_attachment" "monitoring" {
  role       = aws_iam_role.monitoring.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole"
}

resource "aws_db_instance" "this" {
  identifier     = var.name
  engine         = "postgres"
  engine_version = local.engine_major # latest 15.x minor; minor upgrades in the maintenance window
  instance_class = var.instance_class

  allocated_storage     = var.allocated_storage_gib
  max_allocated_storage = var.max_allocated_storage_gib
  storage_type          = "gp3"
  storage_encrypted     = true
  kms_key_id            = var.kms_key_arn

  db_name  = var.databases[0]
  username = var.username
  password = random_password.master.result

  db_subnet_group_name   = aws_db_subnet_group.this.name
  vpc_security_group_ids = [aws_security_group.db.id]
  publicly_accessible    = false
  multi_az               = var.multi_az
  parameter_group_name   = aws_db_parameter_group.this.name

  backup_retention_period   = var.backup_retention_days
  copy_tags_to_snapshot     = true
  deletion_protection       = true
  skip_final_snapshot       = false
  final_snapshot_identifier = "${var.name}-final"

  auto_minor_version_upgrade          = true
  iam_database_authentication_enabled = true
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  monitoring_interval                 = 60
  monitoring_role_arn                 = aws_iam_role.monitoring.arn
  performance_insights_enabled        = true
  performance_insights_kms_key_id     = var.kms_key_arn
}
