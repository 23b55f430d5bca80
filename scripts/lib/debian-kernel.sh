# Sourced by the image builders: fetches the kernel package a Debian metapackage points
# at, without installing anything on the host.
#
#   fetch_kernel_deb META PATTERN DIR
# downloads into DIR the linux-image package that META (e.g. linux-image-amd64) depends
# on, the first dependency matching the awk regex PATTERN, running `apt-get update` only
# if META has no candidate yet. Prints "PACKAGE VERSION DEB-PATH". The caller provides
# log() and sudo_if_needed().

fetch_kernel_deb() {
    local meta=$1 pattern=$2 dir=$3 pkg version
    _candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { print $2 }'; }
    if [ -z "$(_candidate "$meta")" ] || [ "$(_candidate "$meta")" = "(none)" ]; then
        log "no candidate for $meta, running apt-get update"
        sudo_if_needed apt-get update -qq
    fi
    pkg=$(apt-cache depends "$meta=$(_candidate "$meta")" \
        | awk -v re="$pattern" '$1 == "Depends:" && $2 ~ re { print $2; exit }')
    if [ -z "$pkg" ]; then
        log "cannot resolve the kernel package $meta depends on"
        return 1
    fi
    version=$(_candidate "$pkg")
    log "fetching $pkg $version"
    mkdir -p "$dir"
    # apt's download sandbox user must be able to write here.
    chmod 0777 "$dir"
    (cd "$dir" && apt-get download -q "$pkg" >&2)
    echo "$pkg $version $(ls "$dir"/"$pkg"_*.deb)"
}
