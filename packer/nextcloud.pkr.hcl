# One build, two sources sharing every provisioner: amazon-ebs (the AMI) and qemu (the
# local twin). The template only wires inputs; each image/scripts/*.sh does one thing and
# gets its inputs as environment variables.

locals {
  # Every provisioner script runs as root with its inputs in the environment.
  sudo_execute = "chmod +x {{ .Path }}; {{ .Vars }} sudo -E {{ .Path }}"

  ami_name = "${var.ami_name_prefix}-${substr(var.fingerprint, 0, 12)}-${formatdate("YYYYMMDDhhmmss", var.build_time)}"

  # Recorded on the AMI and its snapshots: the same values as version-info.json.
  image_tags = merge(var.extra_tags, {
    Name              = local.ami_name
    environment       = var.env_name
    fingerprint       = var.fingerprint
    git_sha           = var.git_sha
    build_time        = var.build_time
    nextcloud_version = var.nextcloud_version
    nextcloud_image   = var.nextcloud_image
    docker_version    = var.docker_version
    debian_release    = var.debian_release
  })

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
  region        = var.region
  instance_type = var.instance_type
  ami_name      = local.ami_name
  ami_regions   = var.ami_regions

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

  # IMDSv2-only (imds_support = "v2.0" on the AMI, metadata_options on the build
  # instance) needs the amazon plugin of Packer >= 1.8; Debian's Packer 1.6.6 rejects both,
  # so infra/ sets ImdsSupport=v2.0 on the registered AMI (ModifyImageAttribute) and the
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
  encrypt_boot = true

  ssh_username = var.ssh_username

  # A failed build can leave its instance, volume, key pair and security group behind:
  # these tags are how a sweep finds them.
  run_tags        = merge(local.image_tags, { "nextcloud-image:bake" = "true", Name = "packer-bake-${local.ami_name}" })
  run_volume_tags = merge(local.image_tags, { "nextcloud-image:bake" = "true" })
  snapshot_tags   = local.image_tags
  tags            = local.image_tags
}

source "qemu" "nextcloud" {
  accelerator  = "tcg"
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
    ["-cpu", "max"],
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
  sources = ["source.amazon-ebs.nextcloud", "source.qemu.nextcloud"]

  provisioner "shell" {
    inline = ["mkdir -p ${local.staging_dir}"]
  }

  # The rootfs overlay, the Nextcloud image build context and the scripts' data.
  provisioner "file" {
    source      = "${path.root}/../image/"
    destination = local.staging_dir
  }

  provisioner "file" {
    source      = "${var.build_dir}/nextcloud.env"
    destination = "${local.staging_dir}/nextcloud.env"
  }

  # Local twin only: no registry, so the stand-in base image comes as an archive.
  provisioner "file" {
    only        = ["qemu.nextcloud"]
    source      = var.standin_archive
    destination = "${local.staging_dir}/standin.tar.gz"
  }

  provisioner "shell" {
    execute_command  = local.sudo_execute
    environment_vars = concat(local.common_env, ["DOCKER_VERSION=${var.docker_version}"])
    script           = "${path.root}/../image/scripts/install-docker.sh"
  }

  provisioner "shell" {
    execute_command  = local.sudo_execute
    environment_vars = concat(local.common_env, ["OS_PACKAGES=python3-boto3"])
    script           = "${path.root}/../image/scripts/install-os-packages.sh"
  }

  provisioner "shell" {
    execute_command = local.sudo_execute
    environment_vars = concat(local.common_env, [
      "NEXTCLOUD_IMAGE=${var.nextcloud_image}",
      "STANDIN_ARCHIVE=${local.staging_dir}/standin.tar.gz",
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
      "BASE_IMAGE=${var.base_image}",
    ])
    script = "${path.root}/../image/scripts/write-version-info.sh"
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
