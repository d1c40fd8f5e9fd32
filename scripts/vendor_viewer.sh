#!/usr/bin/env bash
# Vendors the stream viewer's 3D avatar libraries into streamer/viewer/vendor/ from npm, at pinned
# versions, so that the page loads nothing from elsewhere and nothing is downloaded at run time:
#   three.core.min.js, three.module.min.js   three.js's minified ES module builds (build/)
#   GLTFLoader.min.js                        three.js's GLTFLoader add-on (examples/jsm/, with the one
#                                            helper it imports), minified by esbuild; imports "three"
#   three-vrm.module.min.js                  @pixiv/three-vrm's minified ES module build; imports "three"
#   LICENSE-three, LICENSE-three-vrm         their MIT licences
#   VERSIONS                                 the versions and each file's sha256 (tests/test_viewer.py checks them)
# The page maps the bare specifier "three" to three.module.min.js with an import map (index.html).
# Needs node and npm (the registry, once); run from anywhere: bash scripts/vendor_viewer.sh
set -euo pipefail

THREE_VERSION=0.180.0
THREE_VRM_VERSION=3.5.5   # built and tested by pixiv against three ^0.180.0
ESBUILD_VERSION=0.28.2

root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/streamer/viewer/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cd "$work"
npm pack --silent "three@$THREE_VERSION" "@pixiv/three-vrm@$THREE_VRM_VERSION" >/dev/null
mkdir three three-vrm
tar -xzf "three-$THREE_VERSION.tgz" -C three --strip-components 1
tar -xzf "pixiv-three-vrm-$THREE_VRM_VERSION.tgz" -C three-vrm --strip-components 1
npm install --silent --no-save --no-audit --no-fund --prefix esbuild "esbuild@$ESBUILD_VERSION" >/dev/null

rm -rf "$out"
mkdir -p "$out"
cp three/build/three.core.min.js three/build/three.module.min.js "$out/"
cp three-vrm/lib/three-vrm.module.min.js "$out/"
esbuild/node_modules/.bin/esbuild three/examples/jsm/loaders/GLTFLoader.js --bundle --format=esm --minify \
  --external:three --legal-comments=none --log-level=warning --outfile="$out/GLTFLoader.min.js"
cp three/LICENSE "$out/LICENSE-three"
cp three-vrm/LICENSE "$out/LICENSE-three-vrm"

cd "$out"
{
  echo "three $THREE_VERSION"
  echo "@pixiv/three-vrm $THREE_VRM_VERSION"
  echo "esbuild $ESBUILD_VERSION (minified GLTFLoader.min.js)"
  sha256sum three.core.min.js three.module.min.js GLTFLoader.min.js three-vrm.module.min.js LICENSE-three LICENSE-three-vrm
} > VERSIONS
ls -l "$out"
