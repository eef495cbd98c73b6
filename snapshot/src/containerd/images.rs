//! The image store: get, create-or-update, delete.

use super::{Containerd, LeaseId};
use crate::error::Result;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::{
    CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, ListImagesRequest,
    UpdateImageRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::types::Descriptor;
use std::collections::HashMap;

/// An image record: a name pointing at a manifest or index.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageRecord {
    pub name: String,
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    pub labels: HashMap<String, String>,
    /// The annotations of the target's descriptor (BuildKit's image
    /// exporter puts the manifest descriptor's there).
    pub annotations: HashMap<String, String>,
}

impl Containerd {
    fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel()).max_decoding_message_size(super::MAX_MESSAGE)
    }

    /// The image record `name` (fully normalized); `NotFound` if absent.
    pub async fn image_get(&self, name: &str) -> Result<ImageRecord> {
        let r = self
            .images()
            .get(self.request(
                GetImageRequest {
                    name: name.to_string(),
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Images.Get", name, s))?;
        let img = r.into_inner().image.unwrap_or_default();
        let t = img.target.unwrap_or_default();
        Ok(ImageRecord {
            name: img.name,
            media_type: t.media_type,
            digest: t.digest,
            size: t.size,
            labels: img.labels,
            annotations: t.annotations,
        })
    }

    /// Every image record of the namespace, by name (`kiln images`).
    pub async fn image_list(&self) -> Result<Vec<ImageRecord>> {
        let r = self
            .images()
            .list(self.request(ListImagesRequest::default(), None))
            .await
            .map_err(|s| self.status_error("Images.List", "", s))?;
        let mut out: Vec<ImageRecord> = r
            .into_inner()
            .images
            .into_iter()
            .map(|img| {
                let t = img.target.unwrap_or_default();
                ImageRecord {
                    name: img.name,
                    media_type: t.media_type,
                    digest: t.digest,
                    size: t.size,
                    labels: img.labels,
                    annotations: t.annotations,
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Points `record.name` at its target: update if it exists, else
    /// create; retried so that concurrent writers of one name both succeed.
    pub async fn image_put(&self, record: &ImageRecord, lease: Option<&LeaseId>) -> Result<()> {
        let image = Image {
            name: record.name.clone(),
            labels: record.labels.clone(),
            target: Some(Descriptor {
                media_type: record.media_type.clone(),
                digest: record.digest.clone(),
                size: record.size,
                annotations: record.annotations.clone(),
            }),
            created_at: None,
            updated_at: None,
        };
        let mut last = None;
        for _ in 0..5 {
            let upd = self
                .images()
                .update(self.request(
                    UpdateImageRequest {
                        image: Some(image.clone()),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into(), "labels".into()],
                        }),
                        source_date_epoch: None,
                    },
                    lease,
                ))
                .await;
            match upd {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == containerd_client::tonic::Code::NotFound => {}
                Err(s) => return Err(self.status_error("Images.Update", &record.name, s)),
            }
            let crt = self
                .images()
                .create(self.request(
                    CreateImageRequest {
                        image: Some(image.clone()),
                        source_date_epoch: None,
                    },
                    lease,
                ))
                .await;
            match crt {
                Ok(_) => return Ok(()),
                Err(s) if s.code() == containerd_client::tonic::Code::AlreadyExists => {
                    last = Some(s);
                }
                Err(s) => return Err(self.status_error("Images.Create", &record.name, s)),
            }
        }
        let s =
            last.unwrap_or_else(|| containerd_client::tonic::Status::aborted("retries exhausted"));
        Err(self.status_error("Images.Create", &record.name, s))
    }

    /// Deletes an image record (sync runs GC after).
    pub async fn image_delete(&self, name: &str, sync: bool) -> Result<()> {
        self.images()
            .delete(self.request(
                DeleteImageRequest {
                    name: name.to_string(),
                    sync,
                    target: None,
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Images.Delete", name, s))?;
        Ok(())
    }
}
