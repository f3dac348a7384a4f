//! Chat commands: `!help`, `!link`, `!unlink`, `!whoami`, `!agents`, `!new`.
//!
//! Every command answers, also when it is unknown or its arguments are wrong.

use sqlx::AnyConnection;

use super::room_ops::{CreateRoomJob, InviteJob};
use super::teams::TeamCommand;
use super::{Hub, bridging, lifecycle, limits, power, routing};
use crate::protocol::link_token::LinkToken;
use crate::protocol::{self, ChannelMessage, Surfaces};
use crate::queue;
use crate::store::{self, accounts, conversations, settings};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Link(Option<String>),
    Unlink,
    Whoami,
    Agents,
    New(Option<String>),
    /// Show or set the room's default agent.
    Agent(Option<String>),
    Invite(String),
    MentionOnly(bool),
    AnswerUnlinked(bool),
    Stop,
    Usage,
    Rename(String),
    Archive,
    Team(super::teams::TeamCommand),
    /// Days this room keeps messages; `None` keeps them forever.
    Retention(Option<i64>),
    Share(String),
    Unshare,
    /// Bridge a chat of another surface into this conversation.
    Bridge {
        surface: String,
        chat_id: String,
        mirror_deletions: bool,
        /// What the surface said when asked whether the sender may bridge the chat
        /// (filled in by the hub before the command runs; parsing leaves it out).
        right: Option<crate::protocol::BridgeRight>,
    },
    /// Remove the bridges of one surface, or all.
    Unbridge(Option<String>),
    /// Open the room of two agents.
    Pair(String, String),
    /// In an agent room: `(agent, text)`.
    Ask(String, String),
    Delegate(String, String),
    Broadcast(String, String),
}

/// A command line that is not understood: the usage to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage(pub String);

/// How commands are written on one surface: its prefix, and the surfaces there are
/// (`!bridge <surface>` names one that can be bridged).
#[derive(Debug, Clone, Copy)]
pub struct Syntax<'a> {
    pub prefix: char,
    pub surfaces: &'a Surfaces,
}

impl<'a> Syntax<'a> {
    /// Commands as written on `channel`.
    pub fn on(surfaces: &'a Surfaces, channel: &str) -> Self {
        Self { prefix: surfaces.command_prefix(channel), surfaces }
    }

    /// `Usage: `!bridge discord <channel id>` or `!bridge telegram <chat id>` …`.
    pub fn bridge_usage(&self) -> String {
        let p = self.prefix;
        let forms: Vec<String> =
            self.surfaces.bridgeable().map(|s| format!("`{p}bridge {} <{} id>`", s.name, s.chat_noun)).collect();
        if forms.is_empty() {
            return "No surface is set up for bridging in this build.".to_string();
        }
        format!("Usage: {} (add `--keep-deleted` to keep messages deleted there); ids are numbers", forms.join(" or "))
    }

    /// `discord|telegram`.
    fn bridgeable_names(&self) -> String {
        self.surfaces.bridgeable().map(|s| s.name).collect::<Vec<_>>().join("|")
    }

    fn is_bridgeable(&self, name: &str) -> bool {
        self.surfaces.get(name).is_some_and(|s| s.bridgeable)
    }
}

/// Parses `text` as a command; `None` when it is not one.
pub fn parse(syntax: Syntax<'_>, text: &str) -> Option<Result<Command, Usage>> {
    let prefix = syntax.prefix;
    let line = text.trim().strip_prefix(prefix)?;
    let mut words = line.split_whitespace();
    let name = words.next()?.to_lowercase();
    // Telegram appends the bot's name in groups: /link@mosaic_bot.
    let name = name.split('@').next().unwrap_or_default().to_string();
    let args: Vec<&str> = words.collect();
    let p = prefix;
    Some(match (name.as_str(), args.as_slice()) {
        ("help", []) => Ok(Command::Help),
        ("link", []) => Ok(Command::Link(None)),
        ("link", [token]) => Ok(Command::Link(Some((*token).to_string()))),
        ("link", _) => {
            Err(Usage(format!("Usage: `{p}link <token>` (or `{p}link` alone for a token to link another channel)")))
        }
        ("unlink", []) => Ok(Command::Unlink),
        ("whoami", []) => Ok(Command::Whoami),
        ("agents", []) => Ok(Command::Agents),
        ("new", []) => Ok(Command::New(None)),
        ("new", title) => Ok(Command::New(Some(title.join(" ")))),
        ("agent", []) => Ok(Command::Agent(None)),
        ("agent", [id]) => Ok(Command::Agent(Some((*id).to_string()))),
        ("agent", _) => Err(Usage(format!("Usage: `{p}agent <id>` sets the agent that answers in this room"))),
        ("invite", [agent]) => Ok(Command::Invite((*agent).to_string())),
        ("invite", _) => Err(Usage(format!("Usage: `{p}invite <agent id>` (see `{p}agents`)"))),
        ("mention-only", [on_off]) if matches!(*on_off, "on" | "off") => Ok(Command::MentionOnly(*on_off == "on")),
        ("mention-only", _) => Err(Usage(format!("Usage: `{p}mention-only on|off`"))),
        ("unlinked", [mode]) if matches!(*mode, "answer" | "ignore") => Ok(Command::AnswerUnlinked(*mode == "answer")),
        ("unlinked", _) => Err(Usage(format!(
            "Usage: `{p}unlinked answer|ignore` (whether agents answer people without a linked account)"
        ))),
        ("rename", []) => Err(Usage(format!("Usage: `{p}rename <title>` renames this conversation"))),
        ("rename", title) => Ok(Command::Rename(title.join(" "))),
        ("archive", []) => Ok(Command::Archive),
        ("team", ["create", name @ ..]) if !name.is_empty() => Ok(Command::Team(TeamCommand::Create(name.join(" ")))),
        ("team", ["add", team, member]) => {
            Ok(Command::Team(TeamCommand::Add { team: (*team).to_string(), member: (*member).to_string() }))
        }
        ("team", ["remove", team, member]) => {
            Ok(Command::Team(TeamCommand::Remove { team: (*team).to_string(), member: (*member).to_string() }))
        }
        ("team", ["list"]) => Ok(Command::Team(TeamCommand::List)),
        ("team", _) => Err(Usage(format!(
            "Usage: `{p}team create <name>`, `{p}team add <team> <@user|account>`, `{p}team remove <team> <@user|account>`, `{p}team list`"
        ))),
        ("retention", ["off"]) => Ok(Command::Retention(None)),
        ("retention", [days]) if days.parse::<u32>().is_ok() => Ok(Command::Retention(days.parse::<i64>().ok())),
        ("retention", _) => Err(Usage(format!("Usage: `{p}retention <days>` or `{p}retention off` (keep forever)"))),
        ("share", [team]) => Ok(Command::Share((*team).to_string())),
        ("share", _) => Err(Usage(format!("Usage: `{p}share <team>` shares this conversation with a team"))),
        ("unshare", []) => Ok(Command::Unshare),
        ("bridge", [surface, chat_id, rest @ ..])
            if syntax.is_bridgeable(surface)
                && valid_chat_id(chat_id)
                && rest.iter().all(|o| *o == "--keep-deleted") =>
        {
            Ok(Command::Bridge {
                surface: (*surface).to_string(),
                chat_id: (*chat_id).to_string(),
                mirror_deletions: rest.is_empty(),
                right: None,
            })
        }
        ("bridge", _) => Err(Usage(syntax.bridge_usage())),
        ("unbridge", []) => Ok(Command::Unbridge(None)),
        ("unbridge", [surface]) if syntax.is_bridgeable(surface) => Ok(Command::Unbridge(Some((*surface).to_string()))),
        ("unbridge", _) => Err(Usage(format!(
            "Usage: `{p}unbridge` (every bridged chat) or `{p}unbridge {}`",
            syntax.bridgeable_names()
        ))),
        ("pair", [a, b]) => Ok(Command::Pair((*a).to_string(), (*b).to_string())),
        ("pair", _) => {
            Err(Usage(format!("Usage: `{p}pair <agent> <agent>` opens a room where two agents work together")))
        }
        ("ask" | "delegate" | "broadcast", [agent, rest @ ..]) if !rest.is_empty() => {
            let (agent, text) = ((*agent).to_string(), rest.join(" "));
            Ok(match name.as_str() {
                "ask" => Command::Ask(agent, text),
                "delegate" => Command::Delegate(agent, text),
                _ => Command::Broadcast(agent, text),
            })
        }
        ("ask" | "delegate" | "broadcast", _) => {
            Err(Usage(format!("Usage: `{p}{name} <agent> <text>` (in a room opened with `{p}pair`)")))
        }
        ("stop", []) => Ok(Command::Stop),
        ("usage", []) => Ok(Command::Usage),
        ("help" | "unlink" | "whoami" | "agents" | "stop" | "usage" | "archive" | "unshare", _) => {
            Err(Usage(format!("Usage: `{p}{name}` takes no arguments")))
        }
        _ => Err(Usage(format!("Unknown command `{p}{name}`. Send `{p}help` for the list of commands."))),
    })
}

/// Chat ids are integers on the surfaces there are (Discord snowflakes, Telegram chat
/// ids, negative for groups).
fn valid_chat_id(id: &str) -> bool {
    let digits = id.strip_prefix('-').unwrap_or(id);
    !digits.is_empty() && digits.len() <= 20 && digits.chars().all(|c| c.is_ascii_digit())
}

pub fn help_text(syntax: Syntax<'_>) -> String {
    let p = syntax.prefix;
    let others: Vec<String> = syntax.surfaces.bridgeable().map(|s| s.title()).collect();
    let (others, bridgeable) = (others.join(", "), syntax.bridgeable_names());
    let chats: Vec<String> = syntax.surfaces.bridgeable().map(|s| format!("{} {}", s.title(), s.chat_noun)).collect();
    let chats = match chats.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    };
    format!(
        "**Mosaic commands**\n\
         - `{p}help` — this list\n\
         - `{p}link <token>` — link this account to your Mosaic account with a token from your admin\n\
         - `{p}link` — get a token to link another channel ({others}) to the same account\n\
         - `{p}unlink` — remove the link of this account\n\
         - `{p}whoami` — show which Mosaic account you are linked to\n\
         - `{p}agents` — list the agents you can talk to\n\
         - `{p}new [title]` — start a new conversation room with the default agent\n\
         - `{p}agent <id>` — choose the agent that answers in this room\n\
         - `{p}invite <agent>` — bring an agent into this room\n\
         - `{p}mention-only on|off` — agents answer only when mentioned\n\
         - `{p}unlinked answer|ignore` — whether agents answer people without a linked account\n\
         - `{p}stop` — stop the answer being written\n\
         - `{p}usage` — tokens used by the agents in this room\n\
         - `{p}rename <title>` — rename this conversation and its room\n\
         - `{p}archive` — archive this conversation (its room becomes read-only)\n\
         - `{p}team create <name>`, `{p}team add <team> <@user|account>`, `{p}team remove <team> <@user|account>`, `{p}team list` — teams\n\
         - `{p}share <team>` / `{p}unshare` — share this conversation with a team, or stop\n\
         - `{p}retention <days>|off` — how long this room keeps its messages\n\
         - `{p}bridge {bridgeable} <id>` / `{p}unbridge` — bridge a {chats} into this room (admins, with proof that they administer that chat)\n\
         - `{p}pair <agent> <agent>` — open your room where two agents work together (needs a linked account)\n\
         - in such a room: `{p}ask <agent> <text>`, `{p}delegate <agent> <task>`, `{p}broadcast <agent> <text>`; begin a message with [HUMAN] to interrupt"
    )
}

/// What a command answers.
pub struct Answer {
    pub text: String,
    /// The answer hands out a link token for this account. The text carries
    /// [`LINK_TOKEN_PLACEHOLDER`]; the token itself is derived from the answer's id when
    /// it is sent, so it is never written to the database.
    pub link_token_for: Option<String>,
}

/// Said when a link token was burnt without linking.
const BURNT: &str = " The link token you sent can no longer be used; ask for a new one.";

/// Stands for the token in an answer that hands one out.
pub const LINK_TOKEN_PLACEHOLDER: &str = "[link token]";

impl Answer {
    /// No reply: what the command did shows in the room by itself.
    pub fn silent() -> Self {
        Self { text: String::new(), link_token_for: None }
    }
}

impl From<String> for Answer {
    fn from(text: String) -> Self {
        Self { text, link_token_for: None }
    }
}

/// The name of a command that makes the service do costly work (and is therefore
/// limited per person), or `None`.
fn costly(command: &Command) -> Option<&'static str> {
    match command {
        Command::New(_) => Some("new"),
        Command::Pair(..) => Some("pair"),
        Command::Team(TeamCommand::Create(_)) => Some("team create"),
        // A token request; redeeming one has its own limit on failures.
        Command::Link(None) => Some("link"),
        _ => None,
    }
}

/// The message as it may be written to the log: a token given to `!link` is masked.
pub fn loggable_content(command: &Command, msg: &ChannelMessage) -> Option<String> {
    match command {
        Command::Link(Some(_)) => Some(format!("{}link [token hidden]", prefix_for_message(msg))),
        _ => None,
    }
}

fn prefix_for_message(msg: &ChannelMessage) -> char {
    msg.content.trim().chars().next().unwrap_or('!')
}

impl Hub {
    pub(super) async fn execute(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        conversation_id: &str,
        msg: &ChannelMessage,
        command: Command,
    ) -> store::Result<Answer> {
        let surfaces = self.surfaces();
        let syntax = Syntax::on(&surfaces, channel);
        let p = syntax.prefix;
        let sender = msg.sender_id.as_str();
        if let Some(change) = power::RoomChange::of(&command)
            && !self.is_admin(conn, channel, sender).await?
            && let Some(refusal) = power::refusal(change, power::RoomPower::of_message(msg).as_ref())
        {
            tracing::info!(channel, sender, ?change, "room change refused");
            return Ok(refusal.into());
        }
        if let Some(name) = costly(&command)
            && let Err(wait) = self.limiter.take(channel, sender, std::time::Instant::now())
        {
            tracing::info!(channel, sender, command = name, wait_secs = wait.as_secs(), "command rate-limited");
            return Ok(format!("You sent `{p}{name}` too often: try again in {}.", limits::wait_text(wait)).into());
        }
        Ok(match command {
            Command::Help => help_text(syntax).into(),
            Command::Link(Some(token)) => self.link(conn, channel, sender, &LinkToken::typed(&token)).await?.into(),
            Command::Link(None) => self.issue_token(conn, channel, msg).await?,
            Command::Unlink => match accounts::unlink_identity(conn, channel, sender).await? {
                true => format!("Unlinked {sender} from its Mosaic account.").into(),
                false => format!("{sender} is not linked to any Mosaic account.").into(),
            },
            Command::Whoami => self.whoami(conn, channel, sender).await?.into(),
            Command::Agents => self.agents_text().into(),
            Command::New(title) => self.new_conversation(conn, channel, sender, title).await?.into(),
            Command::Agent(choice) => self.room_agent(conn, conversation_id, choice).await?.into(),
            Command::Invite(agent) => self.invite_agent(conn, channel, msg, &agent).await?.into(),
            Command::MentionOnly(on) => {
                settings::set(conn, conversation_id, settings::Change::MentionOnly(on)).await?;
                let how = if on { "only when mentioned" } else { "to every message when one person is here" };
                format!("Agents in this room now answer {how}.").into()
            }
            // Whether people without an account are answered is not theirs to decide.
            Command::AnswerUnlinked(_) if accounts::account_for_identity(conn, channel, sender).await?.is_none() => {
                format!("Only people with a linked Mosaic account can change this. Send `{p}link <token>` first.")
                    .into()
            }
            Command::AnswerUnlinked(on) => {
                settings::set(conn, conversation_id, settings::Change::AnswerUnlinked(on)).await?;
                let how = if on { "answer" } else { "ignore" };
                format!("Agents in this room now {how} people without a linked Mosaic account.").into()
            }
            Command::Stop => match self.control.stop(conversation_id) {
                0 => "No agent is writing an answer here.".to_string().into(),
                n => format!("Stopped {n} answer(s).").into(),
            },
            Command::Usage => self.usage_text(conn, conversation_id).await?.into(),
            Command::Rename(title) => {
                lifecycle::rename_conversation(conn, conversation_id, &title).await?;
                format!("Renamed this conversation to **{title}**.").into()
            }
            Command::Archive => match lifecycle::archive_conversation(conn, conversation_id).await? {
                true => "Archived: this conversation is read-only from now on.".to_string().into(),
                false => "This conversation is archived already.".to_string().into(),
            },
            Command::Team(team) => self.team(conn, channel, sender, team).await?,
            Command::Retention(days) => {
                let reach = match self.is_admin(conn, channel, sender).await? {
                    true => store::retention::Reach::AlsoHomeserver,
                    false => store::retention::Reach::StoreOnly,
                };
                self.set_retention(conn, conversation_id, days, reach).await?.into()
            }
            Command::Share(team) => self.share(conn, channel, sender, conversation_id, &team).await?,
            Command::Unshare => self.unshare(conn, conversation_id).await?,
            Command::Bridge { surface, chat_id, mirror_deletions, right } => {
                let chat = bridging::BridgeRequest { surface: &surface, chat_id: &chat_id, mirror_deletions, right };
                self.bridge_chat(conn, msg, conversation_id, chat).await?
            }
            Command::Unbridge(surface) => self.unbridge_chats(conn, msg, conversation_id, surface.as_deref()).await?,
            Command::Pair(a, b) => self.pair(conn, channel, sender, &a, &b).await?,
            Command::Ask(agent, text) => self.ask(conn, conversation_id, msg, &agent, &text).await?,
            Command::Delegate(agent, task) => self.delegate(conn, conversation_id, msg, &agent, &task).await?,
            Command::Broadcast(agent, text) => self.broadcast(conn, conversation_id, msg, &agent, &text).await?,
        })
    }

    /// Redeems `token` for `sender`. A token that does not link (the sender is linked
    /// already, or has failed too often) is burnt all the same: it was seen in a chat.
    pub(super) async fn link(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        sender: &str,
        token: &LinkToken,
    ) -> store::Result<String> {
        let limits = &self.config.linking;
        let token_hash = token.lookup_hash(&self.config.appservice.as_token);
        let used_by = format!("{channel}:{sender}");
        let window_start = store::now_ms() - (limits.attempt_window_secs as i64) * 1000;
        let (failures, oldest) = accounts::link_failures_since(conn, &used_by, window_start).await?;
        if failures >= limits.max_failed_attempts as i64 {
            let burnt = accounts::burn_link_token(conn, &token_hash, &used_by).await?;
            let free_at = oldest.unwrap_or(window_start) + (limits.attempt_window_secs as i64) * 1000;
            let minutes = ((free_at - store::now_ms()).max(0) + 59_999) / 60_000;
            tracing::warn!(channel, sender, burnt, "link attempts rate-limited");
            crate::metrics::link_attempt("rate_limited");
            return Ok(format!(
                "Too many failed link attempts. Try again in {minutes} minute(s).{}",
                if burnt { BURNT } else { "" }
            ));
        }
        if let Some(account) = accounts::account_for_identity(conn, channel, sender).await? {
            let burnt = accounts::burn_link_token(conn, &token_hash, &used_by).await?;
            tracing::info!(channel, sender, burnt, "link attempt by a linked identity");
            crate::metrics::link_attempt("already_linked");
            return Ok(format!(
                "{sender} is already linked to account **{}**, so this link token did nothing; it can no longer be used. Send `{}unlink` first to link it elsewhere, with a new token.",
                account.name,
                self.surfaces().command_prefix(channel)
            ));
        }
        match accounts::redeem_link_token(conn, &token_hash, &used_by).await? {
            Ok(account) => {
                accounts::link_identity(conn, channel, sender, &account.id).await?;
                if channel == protocol::MATRIX {
                    lifecycle::matrix_identity_linked(conn, &account, sender).await?;
                }
                tracing::info!(channel, sender, account = account.name, "identity linked");
                crate::metrics::link_attempt("linked");
                Ok(format!("Linked {sender} to Mosaic account **{}**.", account.name))
            }
            Err(rejection) => {
                accounts::record_link_failure(conn, &used_by).await?;
                crate::metrics::link_attempt("rejected");
                let reason = match rejection {
                    accounts::TokenRejection::Unknown => "That link token is not valid. Check it was copied whole.",
                    accounts::TokenRejection::Expired => "That link token has expired. Ask for a new one.",
                    accounts::TokenRejection::AlreadyUsed => "That link token was already used. Ask for a new one.",
                };
                Ok(reason.to_string())
            }
        }
    }

    /// `!link` alone: a token for the sender's own account, to link another channel. It is
    /// a secret, so it is only handed out where nobody else reads along.
    async fn issue_token(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        msg: &ChannelMessage,
    ) -> store::Result<Answer> {
        let surfaces = self.surfaces();
        let p = surfaces.command_prefix(channel);
        let Some(account) = accounts::account_for_identity(conn, channel, &msg.sender_id).await? else {
            return Ok(format!(
                "Usage: `{p}link <token>` — ask your admin for a token (`mosaic-as link-token <account>`)."
            )
            .into());
        };
        // On other surfaces the answer goes to the person privately (see `Hub::reply`).
        if channel == protocol::MATRIX && routing::participants(msg) > 1 {
            return Ok(format!("Link tokens are secret: send `{p}link` in a direct chat with me.").into());
        }
        let minutes = self.config.linking.token_ttl_secs.div_ceil(60);
        // Surfaces whose commands start otherwise are named with their own form.
        let elsewhere: String = surfaces
            .bridgeable()
            .filter(|s| s.command_prefix != '!')
            .map(|s| format!("\n\n(on {}: `{}link {LINK_TOKEN_PLACEHOLDER}`)", s.title(), s.command_prefix))
            .collect();
        Ok(Answer {
            text: format!(
                "Link token for account **{}** (valid {minutes} min, single use). In the other channel, send:\n\n`!link {LINK_TOKEN_PLACEHOLDER}`{elsewhere}",
                account.name
            ),
            link_token_for: Some(account.id),
        })
    }

    async fn whoami(&self, conn: &mut AnyConnection, channel: &str, sender: &str) -> store::Result<String> {
        let Some(account) = accounts::account_for_identity(conn, channel, sender).await? else {
            return Ok(format!(
                "You are {sender}, not linked to a Mosaic account. Send `{}link <token>` with a token from your admin.",
                self.surfaces().command_prefix(channel)
            ));
        };
        let identities = accounts::identities_of(conn, &account.id).await?;
        let list: Vec<String> =
            identities.iter().map(|i| format!("{} {}", i.channel_name, i.channel_user_id)).collect();
        Ok(format!(
            "You are {sender}, linked to Mosaic account **{}**.\nLinked identities: {}",
            account.name,
            list.join(", ")
        ))
    }

    fn agents_text(&self) -> String {
        let mut text = String::from("**Agents**\n");
        for agent in &self.config.agents {
            let default = if agent.id == self.config.default_agent { " (default)" } else { "" };
            text.push_str(&format!(
                "- **{}** `{}`{default} — on Matrix {}\n",
                agent.display_name(),
                agent.id,
                self.namespace.agent_user_id(&agent.id)
            ));
        }
        text.push_str("\nInvite an agent into a room, or send `!new` to start a room with the default agent.");
        text
    }

    async fn new_conversation(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        sender: &str,
        title: Option<String>,
    ) -> store::Result<String> {
        if channel != protocol::MATRIX {
            return Ok("New conversation rooms are created from Matrix: send `!new` to the Mosaic bot there.".into());
        }
        let title = title.unwrap_or_else(|| "New conversation".into());
        let owner = accounts::account_for_identity(conn, channel, sender).await?;
        let conversation =
            conversations::create_conversation(conn, &title, owner.as_ref().map(|a| a.id.as_str())).await?;
        let agent = self.config.default_agent.clone();
        let job = CreateRoomJob {
            conversation_id: conversation.id.clone(),
            title: title.clone(),
            invite: vec![sender.to_string()],
            agents: vec![agent.clone()],
        };
        let key = format!("create_room:{}", conversation.id);
        queue::enqueue(conn, queue::ROOMS_QUEUE, &key, job).await?;
        let agent_name = self.config.agent(&agent).map(|a| a.display_name()).unwrap_or(agent);
        Ok(format!("Creating **Mosaic: {title}** with {agent_name}. Accept the invitation to start."))
    }
}

impl Hub {
    async fn set_retention(
        &self,
        conn: &mut AnyConnection,
        conversation_id: &str,
        days: Option<i64>,
        reach: store::retention::Reach,
    ) -> store::Result<String> {
        let Some(room) = conversations::room_for_conversation(conn, conversation_id).await? else {
            return Ok("Retention is set on conversation rooms.".into());
        };
        let least = self.config.retention.min_days;
        if let Some(days) = days
            && days < least
        {
            return Ok(format!(
                "Rooms here keep messages at least {least} day(s): send `!retention {least}` or more, or `!retention off`."
            ));
        }
        store::retention::set_policy(conn, &room, "all", days, reach).await?;
        Ok(match days {
            Some(days)
                if reach == store::retention::Reach::StoreOnly
                    && self.config.retention.homeserver_admin_token.is_some() =>
            {
                format!(
                    "This room now keeps messages for {days} day(s); older ones are removed from Mosaic. The homeserver keeps its copy: purging it there needs an admin."
                )
            }
            Some(days) => format!("This room now keeps messages for {days} day(s); older ones are removed."),
            None => "This room now keeps its messages forever.".into(),
        })
    }

    async fn room_agent(
        &self,
        conn: &mut AnyConnection,
        conversation_id: &str,
        choice: Option<String>,
    ) -> store::Result<String> {
        let Some(id) = choice else {
            let current = settings::get(conn, conversation_id).await?.default_agent;
            return Ok(match current {
                Some(agent) => format!("The default agent of this room is `{agent}`."),
                None => "This room has no default agent: every agent here answers.".into(),
            });
        };
        if self.config.agent(&id).is_none() {
            return Ok(format!("There is no agent `{id}`. Send `!agents` for the list."));
        }
        settings::set(conn, conversation_id, settings::Change::DefaultAgent(&id)).await?;
        Ok(format!("`{id}` now answers in this room (others answer when mentioned)."))
    }

    async fn invite_agent(
        &self,
        conn: &mut AnyConnection,
        channel: &str,
        msg: &ChannelMessage,
        agent: &str,
    ) -> store::Result<String> {
        let Some(config) = self.config.agent(agent) else {
            return Ok(format!("There is no agent `{agent}`. Send `!agents` for the list."));
        };
        if channel != protocol::MATRIX {
            return Ok("Agents are invited from Matrix rooms.".into());
        }
        let ghost = self.namespace.agent_user_id(agent);
        if !routing::bot_present(msg) {
            return Ok(format!("I am not in this room: invite {ghost} yourself."));
        }
        let job = InviteJob { room_id: msg.channel_id.clone(), agent: agent.to_string() };
        let key = format!("invite:{}:{agent}:{}", msg.channel_id, msg.id);
        queue::enqueue(conn, queue::ROOMS_QUEUE, &key, job).await?;
        Ok(format!("Inviting {} ({ghost}).", config.display_name()))
    }

    async fn usage_text(&self, conn: &mut AnyConnection, conversation_id: &str) -> store::Result<String> {
        let totals = settings::usage_totals(conn, conversation_id).await?;
        if totals.is_empty() {
            return Ok("No tokens used in this room yet.".into());
        }
        let mut text = String::from("**Token usage in this room**\n");
        for total in totals {
            text.push_str(&format!(
                "- `{}`: {} turn(s), {} input + {} output tokens\n",
                total.agent_id, total.turns, total.input_tokens, total.output_tokens
            ));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(prefix: char, text: &str) -> Option<Result<Command, Usage>> {
        super::parse(Syntax { prefix, surfaces: &crate::surfaces::built_in() }, text)
    }

    #[test]
    fn parses_the_commands_and_their_arguments() {
        assert_eq!(parse('!', "!help"), Some(Ok(Command::Help)));
        assert_eq!(parse('!', "  !LINK abc "), Some(Ok(Command::Link(Some("abc".into())))));
        assert_eq!(parse('!', "!link"), Some(Ok(Command::Link(None))));
        assert_eq!(parse('!', "!new Weekly plan"), Some(Ok(Command::New(Some("Weekly plan".into())))));
        assert_eq!(parse('/', "/whoami@mosaic_bot"), Some(Ok(Command::Whoami)));
        assert_eq!(parse('!', "!agent helper"), Some(Ok(Command::Agent(Some("helper".into())))));
        assert_eq!(parse('!', "!mention-only on"), Some(Ok(Command::MentionOnly(true))));
        assert_eq!(parse('!', "!unlinked ignore"), Some(Ok(Command::AnswerUnlinked(false))));
        assert_eq!(parse('!', "!invite echo"), Some(Ok(Command::Invite("echo".into()))));
        assert_eq!(parse('!', "!stop"), Some(Ok(Command::Stop)));
        assert_eq!(parse('!', "!rename Q3 plan"), Some(Ok(Command::Rename("Q3 plan".into()))));
        assert_eq!(parse('!', "!archive"), Some(Ok(Command::Archive)));
        assert_eq!(
            parse('!', "!team create Core team"),
            Some(Ok(Command::Team(TeamCommand::Create("Core team".into()))))
        );
        assert_eq!(parse('!', "!share core"), Some(Ok(Command::Share("core".into()))));
        assert_eq!(parse('!', "!retention 30"), Some(Ok(Command::Retention(Some(30)))));
        assert_eq!(parse('!', "!retention off"), Some(Ok(Command::Retention(None))));
        assert!(matches!(parse('!', "!retention -1"), Some(Err(_))));
        assert!(matches!(parse('!', "!team frob"), Some(Err(_))));
        assert_eq!(parse('!', "!pair alpha beta"), Some(Ok(Command::Pair("alpha".into(), "beta".into()))));
        assert_eq!(parse('!', "!ask alpha sum it up"), Some(Ok(Command::Ask("alpha".into(), "sum it up".into()))));
        assert_eq!(
            parse('!', "!delegate beta write tests"),
            Some(Ok(Command::Delegate("beta".into(), "write tests".into())))
        );
        assert!(matches!(parse('!', "!ask alpha"), Some(Err(_))));
        assert_eq!(parse('!', "!usage"), Some(Ok(Command::Usage)));
        assert!(matches!(parse('!', "!mention-only maybe"), Some(Err(_))));
        assert_eq!(parse('!', "hello"), None);
        assert_eq!(parse('!', "!"), None);
    }

    #[test]
    fn bad_input_gets_a_usage_line() {
        let Some(Err(Usage(text))) = parse('!', "!link a b") else { panic!() };
        assert!(text.contains("Usage: `!link <token>`"));
        let Some(Err(Usage(text))) = parse('!', "!frobnicate") else { panic!() };
        assert!(text.contains("Unknown command `!frobnicate`") && text.contains("!help"));
        let Some(Err(Usage(text))) = parse('!', "!whoami now") else { panic!() };
        assert!(text.contains("takes no arguments"));
        let Some(Err(Usage(text))) = parse('!', "!bridge slack 42") else { panic!() };
        assert_eq!(
            text,
            "Usage: `!bridge discord <channel id>` or `!bridge telegram <chat id>` (add `--keep-deleted` to keep messages deleted there); ids are numbers"
        );
        let Some(Err(Usage(text))) = parse('/', "/unbridge matrix") else { panic!() };
        assert!(text.ends_with("`/unbridge discord|telegram`"), "{text}");
    }

    #[test]
    fn help_lists_every_command() {
        let surfaces = crate::surfaces::built_in();
        let help = help_text(Syntax { prefix: '!', surfaces: &surfaces });
        assert!(
            help.contains("`!bridge discord|telegram <id>`") && help.contains("a Discord channel or Telegram chat")
        );
        for command in ["!help", "!link <token>", "!unlink", "!whoami", "!agents", "!new"] {
            assert!(help.contains(command), "{command}");
        }
    }
}
