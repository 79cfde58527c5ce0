"""The qcow2 format (KVM, OpenStack): header, tables, the image, its writers and checker."""
