//! OCI image assembly.
