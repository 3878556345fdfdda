region             = "eu-central-1"
name               = "ad-fleet-dev"
vpc_cidr           = "10.41.0.0/16"
cpu_max_size       = 4
gpu_max_size       = 1
gpu_instance_types = ["g5.2xlarge"]
db_instance_class  = "db.t4g.medium"
db_multi_az        = false
