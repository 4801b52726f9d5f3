#!/bin/sh
# Copies published adapters from object storage into this pod's adapter directory.
#   adapter-sync.sh once   one pass (init container: the pod starts with every published version)
#   adapter-sync.sh loop   a pass every $INTERVAL_SECONDS (sidecar: new versions arrive while serving)
# Env: REMOTE (rclone path of the registry's adapters/, e.g. registry:bucket/adapters), DEST (local dir).
#
# A remote version counts as published once its loraplane-adapter.json exists: upload that file last.
# Each version is copied into DEST/<name>/.tmp-<version>-sync and then renamed into place, so the
# gateway and vLLM see a version complete or not at all (the registry's contract: docs/registry.md;
# readers skip names starting with "."). Versions are immutable: one already present is never re-copied.
set -u

sync_version() {
    name=$1
    version=$2
    final="$DEST/$name/$version"
    tmp="$DEST/$name/.tmp-$version-sync"
    rm -rf "$tmp"
    mkdir -p "$tmp" || return 1
    if rclone copy "$REMOTE/$name/$version" "$tmp" && [ -f "$tmp/loraplane-adapter.json" ] \
        && mv "$tmp" "$final"; then
        echo "adapter-sync: published $name@$version"
        return 0
    fi
    rm -rf "$tmp"
    echo "adapter-sync: copying $name@$version failed; will retry" >&2
    return 1
}

sync_once() {
    listing=$(rclone lsf -R --files-only --include "/*/*/loraplane-adapter.json" "$REMOTE") || {
        echo "adapter-sync: cannot list $REMOTE" >&2
        return 1
    }
    failed=0
    for path in $listing; do
        name=${path%%/*}
        rest=${path#*/}
        version=${rest%%/*}
        if ! echo "$name" | grep -Eq '^[a-z0-9][a-z0-9_-]{0,62}$' \
            || ! echo "$version" | grep -Eq '^v[0-9]{1,6}$'; then
            echo "adapter-sync: skipping $name/$version: not <name>/vN (docs/registry.md)" >&2
            continue
        fi
        [ -d "$DEST/$name/$version" ] && continue
        sync_version "$name" "$version" || failed=1
    done
    return $failed
}

case "${1:-once}" in
    once)
        sync_once
        ;;
    loop)
        while true; do
            sync_once || true
            sleep "${INTERVAL_SECONDS:-60}"
        done
        ;;
    *)
        echo "usage: adapter-sync.sh once|loop" >&2
        exit 2
        ;;
esac
