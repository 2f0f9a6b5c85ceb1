#!/usr/bin/env bash
# Replays the Dockerfile's build stage without Docker (issue 20, item 2): its COPY and RUN
# lines, executed as written, in a scratch folder standing for the image's filesystem; then
# checks what the runtime stage copies out of it, and runs the resulting binary's --version
# and check-config on the example config (with throw-away keys). Called by .ci/run; no
# machine here has Docker or registry access, so nothing else ever built the image's binary.
#
#   scripts/dockerfile-replay.sh           # replay (needs cargo, cmake; root for apt-get)
#   scripts/dockerfile-replay.sh --plan    # print the build stage's instructions as the
#                                          # replay reads them, execute nothing
#
# REPLAY_DOCKERFILE=path reads another Dockerfile (tests/it/deployment.rs uses it to show
# that an instruction the replay does not know fails instead of being skipped).
#
# What it understands, in the build stage: FROM (noted: the toolchain is the one installed
# here), ARG NAME[=default] (GIT_COMMIT defaults to `git rev-parse HEAD`), ENV NAME=value,
# WORKDIR /abs, COPY <context paths...> <dest> (no --from/--chown flags), RUN <shell form>
# (run with /bin/sh -c, as Docker does). Anything else -- another instruction, RUN
# --mount, COPY --chown, an exec-form RUN -- stops the replay with an error, so a Dockerfile
# edit cannot slip past it.
#
# The cargo target folder. A cold release build of the dependencies takes 10+ minutes on a
# 2-core machine, so /src/target in the scratch folder is a symlink to this checkout's
# target/ (or $CARGO_TARGET_DIR), where CI's own release build has just compiled the same
# dependencies (same lock file, same toolchain); the registry is the same ~/.cargo. This does
# not weaken the replay: what cargo builds still comes only from what the COPY lines copied
# (the workspace crates live at the scratch path, so their artifacts are the scratch
# folder's own, distinct from the checkout's: the path is part of cargo's package id), and
# the RUN lines' `rm -rf target/...` act on that shared folder exactly as they would on the
# image's. The failure mode the replay exists for -- a placeholder crate from step 1 that
# step 2 does not rebuild -- happens the same way with a warm dependency cache.
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$(pwd)
dockerfile=${REPLAY_DOCKERFILE:-Dockerfile}
plan_only=false
[ "${1:-}" = "--plan" ] && plan_only=true

die() { echo "dockerfile-replay: $*" >&2; exit 1; }
say() { echo "dockerfile-replay: $*" >&2; }

# Logical lines (comments dropped, `\` continuations joined), as Docker reads them.
logical=()
current=""
while IFS= read -r line || [ -n "$line" ]; do
  trimmed="${line#"${line%%[![:space:]]*}"}"
  trimmed="${trimmed%"${trimmed##*[![:space:]]}"}"
  case "$trimmed" in \#*) continue ;; esac
  if [ -z "$trimmed" ] && [ -z "$current" ]; then continue; fi
  if [ "${trimmed%\\}" != "$trimmed" ]; then
    current+="${trimmed%\\} "
  else
    current+="$trimmed"
    [ -n "${current// /}" ] && logical+=("$current")
    current=""
  fi
done < "$dockerfile"
[ -z "$current" ] || die "$dockerfile ends inside a continued line"

# The build stage: from the first FROM to the next one; the runtime stage after it.
build=()
runtime=()
stage=0
for l in "${logical[@]}"; do
  kw=${l%%[[:space:]]*}
  kw=${kw^^}
  [ "$kw" = FROM ] && stage=$((stage + 1))
  case $stage in
    0) die "an instruction before the first FROM: $l" ;;
    1) build+=("$l") ;;
    2) runtime+=("$l") ;;
    *) die "more than two stages: teach scripts/dockerfile-replay.sh the third" ;;
  esac
done
[ ${#build[@]} -gt 0 ] && [ ${#runtime[@]} -gt 0 ] || die "$dockerfile has no build and runtime stage"

# Checks every build-stage instruction is one the replay executes faithfully.
for l in "${build[@]}"; do
  kw=${l%%[[:space:]]*}
  args=${l#*[[:space:]]}
  case "${kw^^}" in
    FROM | ARG | ENV | WORKDIR) ;;
    COPY) case "$args" in --*) die "COPY with flags is not replayed: $l" ;; esac ;;
    RUN) case "$args" in --* | \[*) die "only shell-form RUN without flags is replayed: $l" ;; esac ;;
    *) die "unknown build-stage instruction (teach scripts/dockerfile-replay.sh): $l" ;;
  esac
done

if $plan_only; then
  printf '%s\n' "${build[@]}"
  exit 0
fi

scratch=$(mktemp -d "${TMPDIR:-/tmp}/dockerfile-replay.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
root="$scratch/fs"
mkdir -p "$root"
workdir="$root"
target_dir=${CARGO_TARGET_DIR:-$checkout/target}
unset CARGO_TARGET_DIR # the Dockerfile's paths (target/release/...) are relative to /src
mkdir -p "$target_dir"

for l in "${build[@]}"; do
  kw=${l%%[[:space:]]*}
  args=${l#*[[:space:]]}
  case "${kw^^}" in
    FROM)
      say "FROM $args (replayed with the toolchain here: $(cargo --version))"
      ;;
    ARG)
      name=${args%%=*}
      if [ -z "${!name:-}" ]; then
        if [ "$name" = GIT_COMMIT ]; then
          value=$(git rev-parse HEAD 2>/dev/null || echo unknown)
        elif [ "$name" != "$args" ]; then
          value=${args#*=}
        else
          value=""
        fi
        export "$name=$value"
      fi
      say "ARG $name=${!name}"
      ;;
    ENV)
      export "${args?}"
      say "ENV $args"
      ;;
    WORKDIR)
      case "$args" in /*) ;; *) die "WORKDIR must be absolute: $l" ;; esac
      workdir="$root$args"
      mkdir -p "$workdir"
      # the shared target folder (see the header)
      [ -e "$workdir/target" ] || ln -s "$target_dir" "$workdir/target"
      say "WORKDIR $args (= $workdir; target/ -> $target_dir)"
      ;;
    COPY)
      read -r -a parts <<< "$args"
      dest=${parts[-1]}
      unset 'parts[-1]'
      case "$dest" in /*) to="$root$dest" ;; *) to="$workdir/$dest" ;; esac
      for src in "${parts[@]}"; do
        [ -e "$checkout/$src" ] || die "COPY source $src is not in the checkout: $l"
        if [ -d "$checkout/$src" ]; then
          mkdir -p "$to"
          cp -a "$checkout/$src/." "$to/"
        elif [ "${dest%/}" != "$dest" ] || [ ${#parts[@]} -gt 1 ]; then
          mkdir -p "$to"
          cp -p "$checkout/$src" "$to/"
        else
          mkdir -p "$(dirname "$to")"
          cp -p "$checkout/$src" "$to"
        fi
      done
      say "COPY $args"
      ;;
    RUN)
      if [ "$(id -u)" != 0 ] && [ "${args#apt-get}" != "$args" ]; then
        # only root installs packages; what they install must then be here already
        say "RUN (not root: skipped, checking its packages are installed) $args"
        for pkg in $(echo "$args" | grep -o 'install[^&]*' | tr ' ' '\n' | grep -v '^-' | grep -v '^install$'); do
          command -v "$pkg" >/dev/null || die "not root and $pkg is missing: $l"
        done
        continue
      fi
      say "RUN $args"
      (cd "$workdir" && /bin/sh -ec "$args") || die "failed: $l"
      ;;
  esac
done

# The runtime stage: what it copies out of the build stage, and from the context.
binary=""
for l in "${runtime[@]}"; do
  kw=${l%%[[:space:]]*}
  args=${l#*[[:space:]]}
  [ "${kw^^}" = COPY ] || continue
  read -r -a parts <<< "$args"
  if [ "${parts[0]}" = "--from=build" ]; then
    src="$root${parts[1]}"
    [ -f "$src" ] || die "the runtime stage copies ${parts[1]}, which the build stage did not make"
    [ "${parts[2]##*/}" = alipay-sidecar ] && binary=$src
  else
    [ -e "$checkout/${parts[0]}" ] || die "the runtime stage copies ${parts[0]}, missing from the context"
  fi
done
[ -n "$binary" ] || die "the runtime stage copies no alipay-sidecar binary out of the build stage"

say "the image's binary: $binary"
"$binary" --version
# check-config on the example config as the image ships it, with throw-away keys where the
# example expects them (keys/ next to the config); the "Alipay" key is a second key pair.
cfg="$scratch/etc"
mkdir -p "$cfg"
cp config/sidecar.example.toml "$cfg/sidecar.toml"
"$binary" keygen --out "$cfg/keys" >/dev/null
"$binary" keygen --out "$cfg/alipay" >/dev/null
cp "$cfg/alipay/merchant_public_key.pem" "$cfg/keys/alipay_public_key.pem"
"$binary" check-config --config "$cfg/sidecar.toml"
say "OK: the Dockerfile's build stage builds a binary that runs and accepts the example config"
