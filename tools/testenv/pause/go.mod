// The pod sandbox ("pause") process of the test node: a tiny static binary, so that no
// image is pulled from a public registry. Built by scripts/testenv.sh.
module herald.local/testenv/pause

go 1.24.0
