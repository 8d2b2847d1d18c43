"""From a Telegram `Update` to a channel-neutral `Inbound` (or None for what we ignore)."""

from __future__ import annotations

from telegram import Message, MessageEntity, Update
from telegram.constants import ChatType

from care.conversation import Inbound

_MEDIA = (
    "sticker",
    "photo",
    "voice",
    "video",
    "video_note",
    "audio",
    "animation",
    "document",
    "location",
    "venue",
    "contact",
    "poll",
    "dice",
    "game",
    "story",
    "invoice",
)


def _language(update: Update) -> str | None:
    user = update.effective_user
    code = user.language_code if user is not None else None
    return code[:2].lower() if code else None


def _message_kind(message: Message) -> str | None:
    """The unsupported kind of a message ('sticker', 'forwarded', ...), None for plain text."""
    if message.forward_origin is not None:
        return "forwarded"
    for name in _MEDIA:
        if getattr(message, name, None):
            return name
    if message.text is None:
        return "other"
    return None


def to_inbound(update: Update) -> Inbound | None:
    """The `Inbound` of an update from a private chat; None for anything the bot ignores
    (groups, channels, membership changes and other service updates)."""
    chat = update.effective_chat
    if chat is None or chat.type != ChatType.PRIVATE:
        return None
    language = _language(update)
    query = update.callback_query
    if query is not None:
        return Inbound(
            chat_id=chat.id,
            kind="choice",
            update_id=update.update_id,
            choice_id=(query.data or "")[:64],
            language=language,
        )
    if update.edited_message is not None:
        return Inbound(
            chat_id=chat.id,
            kind="unsupported",
            update_id=update.update_id,
            message_id=update.edited_message.message_id,
            reason="edited",
            language=language,
        )
    message = update.message
    if message is None:
        return None
    kind = _message_kind(message)
    if kind is not None:
        return Inbound(
            chat_id=chat.id,
            kind="unsupported",
            update_id=update.update_id,
            message_id=message.message_id,
            reason=kind,
            language=language,
        )
    text = message.text or ""
    entities = message.entities or ()
    first = entities[0] if entities else None
    if first is not None and first.type == MessageEntity.BOT_COMMAND and first.offset == 0:
        name = text[1 : first.length].split("@", 1)[0].lower()
        args = tuple(text[first.length :].split())
        return Inbound(
            chat_id=chat.id,
            kind="command",
            update_id=update.update_id,
            message_id=message.message_id,
            command=name,
            args=args,
            language=language,
        )
    return Inbound(
        chat_id=chat.id,
        kind="text",
        update_id=update.update_id,
        message_id=message.message_id,
        text=text,
        language=language,
    )
