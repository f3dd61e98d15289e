// Creates allow ACLs on a Kafka cluster through the Admin API (CreateAcls v2+, which the
// Python clients do not speak; Kafka 4 dropped v0-v1). Run as a single-file program with the
// broker's jars: java -cp 'lib/*' GrantAcls.java <bootstrap> "<principal> <type> <name> <op>"...
// Used by tests/deploy/test_kafka_acls_apache.py to load the ACLs gen_kafka_users.py makes.

import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class GrantAcls {
    public static void main(String[] args) throws Exception {
        Properties config = new Properties();
        config.put("bootstrap.servers", args[0]);
        List<AclBinding> bindings = new ArrayList<>();
        for (int i = 1; i < args.length; i++) {
            String[] f = args[i].split(" ");
            ResourcePattern pattern =
                    new ResourcePattern(ResourceType.fromString(f[1]), f[2], PatternType.LITERAL);
            AccessControlEntry entry = new AccessControlEntry(
                    f[0], "*", AclOperation.fromString(f[3]), AclPermissionType.ALLOW);
            bindings.add(new AclBinding(pattern, entry));
        }
        try (Admin admin = Admin.create(config)) {
            admin.createAcls(bindings).all().get();
        }
        System.out.println("created " + bindings.size() + " ACLs");
    }
}
