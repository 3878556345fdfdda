region             = "eu-central-1"
name               = "ad-fleet"
vpc_cidr           = "10.40.0.0/16"
cpu_max_size       = 20
gpu_max_size       = 2
gpu_instance_types = ["g5.4xlarge"]
db_instance_class  = "db.m6g.large"
db_multi_az        = true
