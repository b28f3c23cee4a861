#!/usr/bin/env bash
# Roll out one image of the Slipway service with the manifests of deploy/k8s (what CI's deploy
# stage runs), in one `kubectl apply -k`, and wait until the new pods are ready.
#
#   bash deploy/k8s/release.sh REGISTRY/slipway:VERSION [KUSTOMIZATION_DIR]
#   bash deploy/k8s/release.sh --render REGISTRY/slipway:VERSION [DIR]   # print, apply nothing
#
# KUSTOMIZATION_DIR defaults to deploy/k8s (CPU); deploy/k8s/overlays/gpu for the GPU image.
# The image is set by a kustomization made on the fly on top of that directory (what
# `kustomize edit set image` would write). `kubectl apply -k deploy/k8s` followed by
# `kubectl set image` would instead roll out twice: once to the manifests' placeholder image
# (which `kubectl apply` puts back), then to the real one, leaving a broken revision that
# `kubectl rollout undo` would return to.
#
# Environment: KUBECTL (default: kubectl), NAMESPACE (slipway), ROLLOUT_TIMEOUT (15m), and the
# usual KUBECONFIG.
set -euo pipefail

KUBECTL=${KUBECTL:-kubectl}
NAMESPACE=${NAMESPACE:-slipway}
ROLLOUT_TIMEOUT=${ROLLOUT_TIMEOUT:-15m}

render=false
if [ "${1:-}" = "--render" ]; then
  render=true
  shift
fi
usage="usage: bash deploy/k8s/release.sh [--render] REGISTRY/slipway:VERSION [KUSTOMIZATION_DIR]"
image=${1:?$usage}
dir=${2:-$(dirname "$0")}

# REGISTRY[:PORT]/PATH/slipway:VERSION: the tag is what follows the last colon of the last part
last=${image##*/}
case "$last" in
  *:?*) ;;
  *) echo "error: '$image' has no tag; pass REGISTRY/slipway:VERSION (the bento's version)" >&2
     exit 2 ;;
esac
name=${image%:*}
tag=${last##*:}

[ -f "$dir/kustomization.yaml" ] || { echo "error: $dir has no kustomization.yaml" >&2; exit 2; }
dir=$(cd "$dir" && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# kustomize takes only relative paths to other kustomizations
base=$(python3 -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$dir" "$work")
cat > "$work/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $base
images:
  - name: slipway
    newName: $name
    newTag: "$tag"
EOF

if $render; then
  exec "$KUBECTL" kustomize "$work"
fi
"$KUBECTL" apply -k "$work"
"$KUBECTL" -n "$NAMESPACE" rollout status deployment/slipway --timeout="$ROLLOUT_TIMEOUT"
