#!/usr/bin/env bash
# create-user.sh NAME UID GID: make a login user NAME with exactly this UID and GID, taking
# over an existing user or group that already holds the ID (e.g. `ubuntu` with 1000 in the
# ROS 2 Jazzy image). Used by docker/Dockerfile.* so files written to bind mounts belong to
# the host user whose IDs are in .env (USER_ID, GROUP_ID).
set -euo pipefail
name=$1 uid=$2 gid=$3
if [ "$uid" = 0 ] || [ "$gid" = 0 ]; then
  echo "create-user.sh: USER_ID/GROUP_ID 0 would make the container user root; use your own ids (id -u, id -g)" >&2
  exit 1
fi
if old=$(getent passwd "$uid" | cut -d: -f1) && [ -n "$old" ] && [ "$old" != "$name" ]; then
  userdel -r "$old" 2>/dev/null || userdel "$old"
fi
if old=$(getent group "$gid" | cut -d: -f1) && [ -n "$old" ]; then
  [ "$old" != "$name" ] && groupmod -n "$name" "$old"
else
  groupadd -g "$gid" "$name"
fi
useradd -m -s /bin/bash -u "$uid" -g "$gid" "$name"
