# Inputs of the bake. Two kinds:
# - rendered from environments/<env>.toml into build/<env>/packer-vars.json (-var-file);
#   they determine the image and are covered by the fingerprint;
# - volatile or machine-specific, passed by infra/ with -var at build time (they must not
#   change the fingerprint): fingerprint, git_sha, build_time, paths, canaries.

packer {
  required_version = ">= 1.6.6"
}

# ---- rendered (build/<env>/packer-vars.json) ----

variable "env_name" {
  type        = string
  description = "Environment name (environments/<env>.toml)."
}

variable "region" {
  type        = string
  description = "AWS region the AMI is built in."
  default     = "eu-central-1"
}

variable "instance_type" {
  type        = string
  description = "EC2 instance type of the build instance."
  default     = "t3.medium"
}

variable "source_ami_owner" {
  type        = string
  description = "Owner account of the source AMI (Debian: 136693071363)."
  default     = "136693071363"
}

variable "source_ami_name_filter" {
  type        = string
  description = "Name filter of the source AMI; the most recent match is used."
  default     = "debian-12-amd64-*"
}

variable "ami_name_prefix" {
  type        = string
  description = "AMI names are <prefix>-<fingerprint[:12]>-<build time>."
  default     = "nextcloud"
}

variable "ami_regions" {
  type        = list(string)
  description = "Extra regions the AMI is copied to."
  default     = []
}

variable "extra_tags" {
  type        = map(string)
  description = "Tags added to the AMI, its snapshots and the build's temporary resources."
  default     = {}
}

variable "debian_release" {
  type        = string
  description = "Debian release of the source image (recorded, not used to select)."
  default     = "bookworm"
}

variable "nextcloud_image" {
  type        = string
  description = "Base Nextcloud image: full reference with @sha256 digest, or <name>:<tag>@local for the stand-in."
}

variable "nextcloud_version" {
  type        = string
  description = "Nextcloud version of nextcloud_image, e.g. 34.0.3."
}

variable "db_ca_bundle_url" {
  type        = string
  description = "Where the bake downloads the database's CA bundle (database.ca_bundle_url)."
}

variable "db_ca_bundle_sha256" {
  type        = string
  description = "The bundle's sha256 (database.ca_bundle_sha256); empty: no bundle (the local twin)."
}

variable "docker_version" {
  type        = string
  description = "\"debian\" for Debian's docker.io, otherwise the apt version pin of docker-ce."
}

variable "docker_packages" {
  type        = string
  description = "Engine packages installed at exactly these versions and held: \"name=version ...\"."
}

variable "root_volume_size_gb" {
  type        = number
  description = "Root volume size of the image in GiB."
  default     = 20
}

variable "ssh_username" {
  type        = string
  description = "Default user of the source image."
  default     = "admin"
}

variable "source_image_id" {
  type        = string
  description = "The exact source image resolved on the host (AWS: ami-...; local twin: the base disk's sha256 digest); empty = the newest match of the filter."
  default     = ""
}

variable "source_image_name" {
  type        = string
  description = "Name of the resolved source image (recorded, and covered by the fingerprint)."
  default     = ""
}

# ---- volatile (-var from infra/) ----

variable "fingerprint" {
  type        = string
  description = "sha256 of the rendered inputs (build/<env>/fingerprint)."
}

variable "git_sha" {
  type        = string
  description = "Commit the image is built from."
}

variable "build_time" {
  type        = string
  description = "Build start, RFC 3339 UTC (e.g. 2026-01-02T03:04:05Z)."
}

variable "build_dir" {
  type        = string
  description = "Absolute path of build/<env> (nextcloud.env in, manifest out)."
}

variable "output_dir" {
  type        = string
  description = "qemu only: directory the qcow2 is written to (must not exist)."
  default     = ""
}

variable "accelerator" {
  type        = string
  description = "qemu only: kvm where it boots the twin's kernel, else tcg (infra/localtwin/accel.py decides)."
  default     = "tcg"
}

variable "qemu_cpu" {
  type        = string
  description = "qemu only: -cpu model, host under kvm, max under tcg."
  default     = "max"
}

variable "base_disk" {
  type        = string
  description = "qemu only: raw base disk, the local stand-in for the source AMI."
  default     = ""
}

variable "image_upload_dir" {
  type        = string
  description = "Directory holding exactly the image/ files the fingerprint covers (render/outputs.py stage_image_upload)."
}

variable "bake_insecure_registry" {
  type        = string
  description = "qemu only: host:port of the twin's loopback registry, trusted without TLS during the pull only (never in the image)."
  default     = ""
}

variable "kernel" {
  type        = string
  description = "qemu only: kernel booted with -kernel."
  default     = ""
}

variable "initrd" {
  type        = string
  description = "qemu only: initrd booted with -initrd."
  default     = ""
}

variable "bake_seed_dir" {
  type        = string
  description = "qemu only: NoCloud seed (user-data with the bake's SSH key, meta-data) served over Packer's HTTP server."
  default     = ""
}

variable "ssh_private_key_file" {
  type        = string
  description = "Private key of the bake's throwaway key pair (amazon-ebs: the key of ssh_keypair_name)."
  default     = ""
}

# ---- amazon-ebs, volatile (infra/aws/bake.py) ----

variable "ec2_endpoint" {
  type        = string
  description = "EC2 endpoint when it is not AWS's own (AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_EC2); empty = AWS."
  default     = ""
}

variable "subnet_id" {
  type        = string
  description = "Subnet of the bake instance (bake.subnet_id)."
  default     = ""
}

variable "security_group_id" {
  type        = string
  description = "The run's security group (SSH only from the build host), created and removed by infra/."
  default     = ""
}

variable "ssh_keypair_name" {
  type        = string
  description = "The run's key pair (public half imported by infra/; the private key never leaves the host)."
  default     = ""
}

variable "ssh_interface" {
  type        = string
  description = "How Packer reaches the bake instance: public_ip, private_ip or session_manager."
  default     = "public_ip"
  validation {
    condition     = contains(["public_ip", "private_ip", "session_manager"], var.ssh_interface)
    error_message = "The ssh_interface must be public_ip, private_ip or session_manager."
  }
}

variable "iam_instance_profile" {
  type        = string
  description = "Instance profile of the bake instance (ECR pulls, Session Manager); empty = none."
  default     = ""
}

variable "ami_tags" {
  type        = map(string)
  description = "Tags of the AMI and its snapshots in every region (keys: render/tags.py)."
  default     = {}
}

variable "run_tags" {
  type        = map(string)
  description = "Tags of the bake instance and its volume: this run's id, so a sweep finds them."
  default     = {}
}

variable "validate_canaries" {
  type        = string
  description = "Comma-separated strings that must not be found anywhere on the image filesystem."
  sensitive   = true
  default     = ""
}
