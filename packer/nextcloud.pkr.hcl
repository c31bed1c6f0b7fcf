# One build, two sources sharing every provisioner: amazon-ebs (the AMI) and qemu (the
# local twin); and, at the end, the amazon-ebs source alone for an AWS emulator. The template
# only wires inputs; each image/scripts/*.sh does one thing and gets its inputs as
# environment variables.

locals {
  # Every provisioner script runs as root with its inputs in the environment.
  sudo_execute = "chmod +x {{ .Path }}; {{ .Vars }} sudo -E {{ .Path }}"

  ami_name = "${var.ami_name_prefix}-${substr(var.fingerprint, 0, 12)}-${formatdate("YYYYMMDDhhmmss", var.build_time)}"

  # Where the uploaded sources (image/ and the rendered env file) live during the bake;
  # cleanup.sh removes it.
  staging_dir = "/tmp/nextcloud-image"

  # Every script sees the canaries, the way a leaked build secret would be visible;
  # validate.sh proves none of them reached the disk.
  common_env = [
    "DEBIAN_FRONTEND=noninteractive",
    "VALIDATE_CANARIES=${var.validate_canaries}",
  ]
}

source "amazon-ebs" "nextcloud" {
  region = var.region
  # AWS_ENDPOINT_URL(_EC2) as boto3 resolves it (infra/aws/session.py); empty = AWS itself.
  custom_endpoint_ec2 = var.ec2_endpoint
  instance_type       = var.instance_type
  ami_name            = local.ami_name
  ami_regions         = var.ami_regions

  # The exact AMI infra/ resolved on the host (the fingerprint covers it), and it must still
  # match the selector: AWS answers ImageIds + Filters + Owners with their intersection.
  source_ami = var.source_image_id
  source_ami_filter {
    filters = {
      name                = var.source_ami_name_filter
      architecture        = "x86_64"
      virtualization-type = "hvm"
      root-device-type    = "ebs"
    }
    owners      = [var.source_ami_owner]
    most_recent = true
  }

  # The settings' subnet (no default-VPC assumption), and a security group and key pair infra/
  # created for this run and tagged with it: SSH only from the build host, never 0.0.0.0/0.
  subnet_id                   = var.subnet_id
  security_group_id           = var.security_group_id
  associate_public_ip_address = var.ssh_interface == "public_ip"
  ssh_interface               = var.ssh_interface
  ssh_keypair_name            = var.ssh_keypair_name
  ssh_private_key_file        = var.ssh_private_key_file
  iam_instance_profile        = var.iam_instance_profile
  ssh_username                = var.ssh_username
  ssh_timeout                 = "15m"

  # IMDSv2-only (imds_support = "v2.0" on the AMI, metadata_options on the build
  # instance) needs the amazon plugin of Packer >= 1.8; Debian's Packer 1.6.6 rejects both,
  # so infra/ sets ImdsSupport=v2.0 on every registered copy (ModifyImageAttribute) and the
  # launch template requires IMDSv2 tokens.

  launch_block_device_mappings {
    device_name = "/dev/xvda"
    volume_size = var.root_volume_size_gb
    volume_type = "gp3"
    # gp3 baseline, spelled out: Packer 1.6.6 rejects gp3 without them.
    iops                  = 3000
    throughput            = 125
    encrypted             = true
    delete_on_termination = true
  }
  # No encrypt_boot: the root volume is encrypted at launch (above), so CreateImage makes an encrypted AMI directly.
  # encrypt_boot would register an intermediate, unencrypted AMI under a random name, which Packer 1.6.6 never tags
  # (CreateImage without tags, then CopyImage, then it deregisters it): an untagged image and an unencrypted snapshot
  # of the whole disk, for minutes, that no tag condition can tell apart from any other of the account.

  # Tag keys are defined once, in render/tags.py; infra/aws/ami.py fills these maps. The
  # AMI and its snapshots (in every region) carry the provenance; the instance and its
  # volume carry the run's tags, which is how a failed bake's leftovers are found and swept.
  tags            = merge(var.extra_tags, var.ami_tags)
  snapshot_tags   = merge(var.extra_tags, var.ami_tags)
  run_tags        = merge(var.extra_tags, var.run_tags)
  run_volume_tags = merge(var.extra_tags, var.run_tags)
}

source "qemu" "nextcloud" {
  accelerator  = var.accelerator
  disk_image   = true
  iso_url      = var.base_disk
  iso_checksum = "none"
  format       = "qcow2"
  disk_size    = "${var.root_volume_size_gb * 1024}M"

  output_directory = var.output_dir
  vm_name          = "nextcloud.qcow2"
  headless         = true
  cpus             = 2
  memory           = 2048
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  # cleanup.sh trims the filesystem: with discards passed through, blocks freed during the bake (apt
  # lists and cache, Docker's build cache) leave the qcow2 instead of being carried by every copy.
  disk_discard       = "unmap"
  disk_detect_zeroes = "unmap"

  # cloud-init (NoCloud) fetches the seed from Packer's HTTP server, like EC2 user data.
  http_directory = var.bake_seed_dir
  boot_wait      = "1s"
  qemuargs = [
    ["-kernel", var.kernel],
    ["-initrd", var.initrd],
    ["-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0"],
    ["-cpu", var.qemu_cpu],
    ["-serial", "file:${var.build_dir}/bake-console.log"],
    ["-smbios", "type=1,serial=ds=nocloud-net;s=http://{{ .HTTPIP }}:{{ .HTTPPort }}/"],
  ]

  communicator         = "ssh"
  ssh_username         = var.ssh_username
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout          = "20m"
  shutdown_command     = "sudo shutdown -P now"
  shutdown_timeout     = "5m"
}

build {
  sources = ["source.qemu.nextcloud"]

  # Each build fixes its communicator: this one provisions over SSH, the emulator build below
  # never connects (a variable could pair this build with "none", or the emulator with SSH).
  source "source.amazon-ebs.nextcloud" {
    communicator = "ssh"
  }

  provisioner "shell" {
    inline = ["mkdir -p ${local.staging_dir}"]
  }

  # The rootfs overlay, the Nextcloud image build context and the scripts' helpers: exactly the files the
  # fingerprint covers (render/outputs.py IMAGE_UPLOAD, staged by infra/ into image_upload_dir).
  provisioner "file" {
    source      = "${var.image_upload_dir}/"
    destination = local.staging_dir
  }

  provisioner "file" {
    source      = "${var.build_dir}/nextcloud.env"
    destination = "${local.staging_dir}/nextcloud.env"
  }

  # The secret reference grammar the boot-time resolver reads (generated from render/secret_refs.py).
  provisioner "file" {
    source      = "${var.build_dir}/secret-references.json"
    destination = "${local.staging_dir}/secret-references.json"
  }

  provisioner "shell" {
    execute_command = local.sudo_execute
    environment_vars = concat(local.common_env, [
      "DOCKER_VERSION=${var.docker_version}",
      "DOCKER_PACKAGES=${var.docker_packages}",
      "STAGING_DIR=${local.staging_dir}",
    ])
    script = "${path.root}/../image/scripts/install-docker.sh"
  }

  provisioner "shell" {
    execute_command  = local.sudo_execute
    environment_vars = concat(local.common_env, ["OS_PACKAGES=python3-boto3 curl"])
    script           = "${path.root}/../image/scripts/install-os-packages.sh"
  }

  # The database's CA bundle (RDS), downloaded and checked against its pinned sha256: verify-full from every client.
  provisioner "shell" {
    execute_command = local.sudo_execute
    environment_vars = concat(local.common_env, [
      "DB_CA_URL=${var.db_ca_bundle_url}",
      "DB_CA_SHA256=${var.db_ca_bundle_sha256}",
    ])
    script = "${path.root}/../image/scripts/install-db-ca.sh"
  }

  provisioner "shell" {
    execute_command = local.sudo_execute
    environment_vars = concat(local.common_env, [
      "NEXTCLOUD_IMAGE=${var.nextcloud_image}",
      "INSECURE_REGISTRY=${var.bake_insecure_registry}",
    ])
    script = "${path.root}/../image/scripts/cache-nextcloud-image.sh"
  }

  provisioner "shell" {
    execute_command = local.sudo_execute
    environment_vars = concat(local.common_env, [
      "NEXTCLOUD_IMAGE=${var.nextcloud_image}",
      "FINGERPRINT=${var.fingerprint}",
      "BUILD_CONTEXT=${local.staging_dir}/nextcloud",
    ])
    script = "${path.root}/../image/scripts/build-nextcloud-image.sh"
  }

  provisioner "shell" {
    execute_command  = local.sudo_execute
    environment_vars = concat(local.common_env, ["STAGING_DIR=${local.staging_dir}"])
    script           = "${path.root}/../image/scripts/install-units.sh"
  }

  provisioner "shell" {
    execute_command  = local.sudo_execute
    environment_vars = local.common_env
    script           = "${path.root}/../image/scripts/harden-access.sh"
  }

  provisioner "shell" {
    execute_command = local.sudo_execute
    environment_vars = concat(local.common_env, [
      "ENV_NAME=${var.env_name}",
      "GIT_SHA=${var.git_sha}",
      "BUILD_TIME=${var.build_time}",
      "FINGERPRINT=${var.fingerprint}",
      "NEXTCLOUD_IMAGE=${var.nextcloud_image}",
      "NEXTCLOUD_VERSION=${var.nextcloud_version}",
      "BASE_IMAGE=${var.source_image_id}",
      "BASE_IMAGE_NAME=${var.source_image_name}",
      "DOCKER_PACKAGES=${var.docker_packages}",
    ])
    script = "${path.root}/../image/scripts/write-version-info.sh"
  }

  # The artifact's provenance (installed packages, image digests) beside the manifest: infra/ summarises it there,
  # so what changed between two images is one diff.
  provisioner "file" {
    direction   = "download"
    source      = "/etc/nextcloud-image/version-info.json"
    destination = "${var.build_dir}/version-info.json"
  }

  provisioner "shell" {
    execute_command  = local.sudo_execute
    environment_vars = concat(local.common_env, ["STAGING_DIR=${local.staging_dir}", "SSH_USERNAME=${var.ssh_username}"])
    script           = "${path.root}/../image/scripts/cleanup.sh"
  }

  # Last: the bake fails if identity files or any canary remain on the filesystem.
  provisioner "shell" {
    execute_command  = local.sudo_execute
    environment_vars = concat(local.common_env, ["FINGERPRINT=${var.fingerprint}"])
    script           = "${path.root}/../image/scripts/validate.sh"
  }

  post-processor "manifest" {
    output     = "${var.build_dir}/packer-manifest.json"
    strip_path = false
    custom_data = {
      fingerprint = var.fingerprint
      git_sha     = var.git_sha
      environment = var.env_name
      build_time  = var.build_time
    }
  }
}

# The AWS side alone, for an AWS emulator (bake.communicator = "none"): the same
# source (exact + filtered source AMI, launch in the subnet, image, tags, region copies), no
# provisioners. Packer 1.6.6's shell and file provisioners cannot run without a communicator
# (every upload fails: "Upload is not implemented when communicator = 'none'", after 5 minutes
# of retries), so the emulator build has none; an emulator instance is never connected to.
build {
  source "source.amazon-ebs.nextcloud" {
    name         = "emulator"
    communicator = "none"
  }

  post-processor "manifest" {
    output     = "${var.build_dir}/packer-manifest.json"
    strip_path = false
    custom_data = {
      fingerprint = var.fingerprint
      git_sha     = var.git_sha
      environment = var.env_name
      build_time  = var.build_time
    }
  }
}
