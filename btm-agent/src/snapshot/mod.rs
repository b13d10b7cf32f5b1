//! Native snapshot modes: ZFS datasets and Btrfs subvolumes.
