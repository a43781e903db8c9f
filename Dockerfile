# The spire-csi-driver image: Node.js, the compiled driver and its production dependencies. (The driver encodes
# and decodes its protobuf messages itself, src/protobuf/; it reads no .proto file at run time.)
# scripts/image-build-check runs the same steps outside a container (CI has no Docker engine).
#
#   docker build -t <registry>/spire-csi-driver:0.1.0 .
#
# Both stages use the same Node.js image, pinned by version tag. Node 22 is the LTS line with security fixes
# (Node 20, which the tests also run on, reached end of life in April 2026); the driver needs Node >= 20.19.
ARG NODE_IMAGE=node:22.22-bookworm-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /build
# Dependencies first, so that source changes reuse the npm ci layer.
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json ./
COPY scripts/bundle-driver.mjs scripts/
COPY src/ src/
# tsconfig.json also includes test/ and bench/, which are not in the build context: only src/ is compiled. Then
# scripts/bundle-driver.mjs makes dist/src/main.js one minified file (the ENTRYPOINT runs it; ~3.5 MiB less RSS).
RUN npm run build

FROM ${NODE_IMAGE}
LABEL org.opencontainers.image.title="spire-csi-driver" \
      org.opencontainers.image.description="CSI node driver (csi.spire.io) writing SPIFFE X.509-SVIDs into inline volumes" \
      org.opencontainers.image.licenses="Apache-2.0"
# The driver mounts and unmounts a tmpfs per volume with the mount(2)/umount2(2) syscalls (through koffi); where koffi
# cannot load it falls back to mount(8) and umount(8) from util-linux, which Debian's slim images include (package
# "mount", priority required); fail the build if that ever changes.
RUN command -v mount && command -v umount
WORKDIR /opt/spire-csi-driver
ENV NODE_ENV=production
COPY package.json package-lock.json ./
# Production dependencies only. npm, npx, corepack and yarn are not needed at run time and are removed
# (less to patch in a privileged container).
RUN npm ci --omit=dev --no-audit --no-fund \
 && npm cache clean --force \
 && rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack /opt/yarn-* \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /usr/local/bin/yarn /usr/local/bin/yarnpkg
COPY --from=build /build/dist/src/ dist/src/
# The driver takes its state directory lock with flock(2) through koffi, whose prebuilt binary comes from an
# optional per-platform package (@koromix/koffi-linux-x64 on amd64) that npm ci installs only where it matches.
# Without it the driver would run unlocked (with a warning); fail the build instead.
RUN node -e "import('./dist/src/fs/libc.js').then((libc) => libc.loadLibc())"
# Root: the driver mounts a tmpfs per volume into kubelet's pods directory. The chart runs it with a read-only
# root filesystem.
USER 0:0
# V8 flags for a small, long-lived daemon (the benchmarks and tests run the driver with the same ones,
# test/support/driver-harness.ts DRIVER_NODE_FLAGS; test/unit/image-flags.test.ts keeps them equal):
# - a 1 MiB young generation instead of 16 MiB semi-spaces: with 500 volumes RSS fell from ~121 to ~92 MiB,
#   for a few more sub-millisecond scavenges;
# - --optimize-for-size: V8 grows the old generation in smaller steps and collects sooner: the peak while 500
#   volumes publish at once fell from ~98 to ~90 MiB, for the same publish latency;
# - --jitless: no optimising compilers, no executable code pages: ~10 MiB less when idle and ~14 MiB less with
#   500 volumes, for the same CPU per publish (the driver's work is I/O and OpenSSL, not hot JavaScript);
# - --no-expose-wasm: nothing here uses WebAssembly, which --jitless disables anyway; saying so silences V8's
#   warning about the conflict. (Not allowed in NODE_OPTIONS, hence flags on the command line.)
# - --expose-gc: at the end of a burst of publishes the driver runs one full collection before it returns the C
#   heap's free pages to the kernel (src/memory-trimmer.ts); nothing else calls it.
ENTRYPOINT ["node", "--max-semi-space-size=1", "--optimize-for-size", "--jitless", "--no-expose-wasm", "--expose-gc", "dist/src/main.js"]
