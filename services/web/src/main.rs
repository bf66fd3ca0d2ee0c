//! `baton-web --config FILE`: see the crate documentation.

baton_kit::service_main!(baton_web::Application);
