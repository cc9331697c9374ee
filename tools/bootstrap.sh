# Shared set-up for the README's two commands; sourced, not run.
# Installs the Debian packages Astara needs, makes the project's virtual environment (.venv),
# and makes sure RabbitMQ, MariaDB and Redis answer on loopback. Safe to run again: each step
# is skipped when already done.
set -euo pipefail

ASTARA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ASTARA_ROOT/.venv"

# Debian packages: the appliance's data plane (nftables, dnsmasq, radvd...), the tools the
# tests use as workloads (udhcpc, ping, arping), what building the venvs needs, the browser
# the dashboard's browser tests drive (headless Chromium and its WebDriver), the OpenStack
# bed's hypervisor and switch (libvirt + QEMU for Nova, genisoimage for config drives, tini to
# reap the QEMUs libvirt daemonizes, Open vSwitch for Neutron's OVS agent, libvirt-dev to build
# libvirt-python), and what
# astara-image builds images with (mmdebstrap, e2fsprogs, fdisk, GRUB for BIOS, cpio).
DEBIAN_PACKAGES=(
    python3 python3-venv python3-dev gcc
    iproute2 nftables iptables conntrack dnsmasq-base radvd bird2
    udhcpc isc-dhcp-client ndisc6 iputils-ping iputils-arping socat procps psmisc
    chromium chromium-driver
    libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils genisoimage tini
    openvswitch-switch pkg-config libvirt-dev util-linux
    mmdebstrap debian-archive-keyring e2fsprogs fdisk grub-pc-bin cpio gzip
)

step() { printf '\n==> %s\n' "$*"; }

install_debian_packages() {
    local missing=() pkg
    for pkg in "${DEBIAN_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        step "Debian packages: all present"
        return
    fi
    if [ "$(id -u)" -ne 0 ]; then
        echo "Missing Debian packages: ${missing[*]}" >&2
        echo "Run this command as root, or install them first: apt-get install ${missing[*]}" >&2
        exit 1
    fi
    step "Installing Debian packages: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
}

python_for_venv() {
    local candidate
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))'; then
            echo "$candidate"
            return
        fi
    done
    echo "Python 3.11 or newer is needed; install python3 (Debian 12 ships 3.11)." >&2
    exit 1
}

make_venv() {
    local stamp="$VENV/.astara-installed" want
    want=$(sha256sum "$ASTARA_ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        step "Virtual environment: up to date ($VENV)"
        return
    fi
    step "Virtual environment: installing Astara and its test tools into $VENV"
    [ -x "$VENV/bin/python" ] || "$(python_for_venv)" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e "$ASTARA_ROOT[test,osc]"
    echo "$want" > "$stamp"
}

# Debian starts bird2's own daemon on the host where systemd runs; Astara runs bird only
# inside appliances, with their own configuration.
quiet_host_bird() {
    if [ -d /run/systemd/system ] && systemctl is-enabled --quiet bird.service 2>/dev/null; then
        systemctl disable --now bird.service
    fi
}

bootstrap() {
    install_debian_packages
    quiet_host_bird
    make_venv
    step "Services: RabbitMQ, MariaDB, Redis"
    "$VENV/bin/python" -m astara.testing.services ensure
}
