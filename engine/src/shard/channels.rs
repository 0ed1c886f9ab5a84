//! A UA's channels: a vector sorted by id, searched by bisection. Most UAs
//! have one channel or two; a hash map would cost them a table several times
//! the size of its entries, plus a 32-byte hasher, in every UA.

use super::Channel;
use crate::ChannelId;

/// Up to this many channels, the vector grows one entry at a time, so that
/// the common UA pays for no spare room; past it, by doubling.
const EXACT_GROWTH_MAX: usize = 8;

#[derive(Default)]
pub(super) struct Channels {
    entries: Vec<(ChannelId, Channel)>,
}

impl Channels {
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn position(&self, id: &ChannelId) -> Result<usize, usize> {
        self.entries.binary_search_by(|(entry, _)| entry.cmp(id))
    }

    pub(super) fn get(&self, id: &ChannelId) -> Option<&Channel> {
        let index = self.position(id).ok()?;
        Some(&self.entries[index].1)
    }

    pub(super) fn get_mut(&mut self, id: &ChannelId) -> Option<&mut Channel> {
        let index = self.position(id).ok()?;
        Some(&mut self.entries[index].1)
    }

    pub(super) fn contains_key(&self, id: &ChannelId) -> bool {
        self.position(id).is_ok()
    }

    /// The channel, first inserted as `new` if the UA does not have it.
    pub(super) fn get_or_insert(&mut self, id: ChannelId, new: Channel) -> &mut Channel {
        let index = match self.position(&id) {
            Ok(index) => index,
            Err(index) => {
                if self.entries.len() < EXACT_GROWTH_MAX {
                    self.entries.reserve_exact(1);
                }
                self.entries.insert(index, (id, new));
                index
            }
        };
        &mut self.entries[index].1
    }

    pub(super) fn remove(&mut self, id: &ChannelId) {
        if let Ok(index) = self.position(id) {
            self.entries.remove(index);
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&ChannelId, &Channel)> {
        self.entries.iter().map(|(id, channel)| (id, channel))
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &ChannelId> {
        self.entries.iter().map(|(id, _)| id)
    }
}
